"""NftLib: nft transactions through libnftables in a namespace we create, listings as NftCli's."""

from __future__ import annotations

import threading

import pytest

from flannelish.errors import KernelError
from flannelish.kernel.nft import NftCli
from flannelish.kernel.nftlib import NftLib, nft_runner
from flannelish.testing.netns import NetnsFactory

SCRIPT = """table inet fltest {
  counter c1 { comment "x/p" }
  set s { type ipv4_addr; }
}
"""


def test_transactions_apply_in_the_namespace_and_errors_name_the_problem(
    netns_factory: NetnsFactory,
) -> None:
    ns = netns_factory.create("nl")
    lib = nft_runner(ns)
    assert isinstance(lib, NftLib)  # libnftables is installed with nftables
    lib.run(SCRIPT)
    lib.run("add element inet fltest s { 10.244.1.2, 10.244.1.3 }")
    with pytest.raises(KernelError) as err:
        lib.run("add element inet fltest nosuchset { 10.244.1.4 }")
    assert "nosuchset" in str(err.value) or "No such file" in str(err.value)
    cli = NftCli(netns=ns)
    items = cli.listing("table", "inet", "fltest") or []
    (s,) = [i["set"] for i in items if "set" in i]
    assert sorted(s["elem"]) == ["10.244.1.2", "10.244.1.3"]
    assert lib.listing("counters", "table", "inet", "fltest") == cli.listing(
        "counters", "table", "inet", "fltest"
    )
    assert lib.listing("table", "inet", "nosuch") is None
    lib.close()


def test_runners_in_threads_of_one_process_do_not_interfere(netns_factory: NetnsFactory) -> None:
    # the library keeps process-wide state: concurrent calls are serialized
    names = [netns_factory.create(f"t{i}") for i in range(3)]
    runners = [NftLib(n) for n in names]
    for r in runners:
        r.run(SCRIPT)
    errors: list[BaseException] = []

    def work(r: NftLib, k: int) -> None:
        try:
            for j in range(40):
                r.run(f"add element inet fltest s {{ 10.{k}.0.{j + 1} }}")
                r.listing("counters", "table", "inet", "fltest")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r, k)) for k, r in enumerate(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k, n in enumerate(names):
        items = NftCli(netns=n).listing("table", "inet", "fltest") or []
        (s,) = [i["set"] for i in items if "set" in i]
        assert len(s["elem"]) == 40 and all(e.startswith(f"10.{k}.0.") for e in s["elem"])
