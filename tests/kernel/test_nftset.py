"""SetElements: nftables set elements over nfnetlink, checked against the nft binary's view."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from flannelish.errors import KernelError
from flannelish.kernel.nft import NftCli
from flannelish.kernel.nftset import ELEMENTS_PER_MESSAGE, SetElements
from flannelish.testing.proc import run

pytestmark = pytest.mark.netns

TABLES = (
    "add table ip flt; add set ip flt peers { type ipv4_addr; };"
    " add table ip6 flt; add set ip6 flt peers { type ipv6_addr; }"
)


def nft_elements(ns: str, family: str) -> set:
    items = NftCli(netns=ns).listing("set", family, "flt", "peers") or []
    (found,) = [i["set"] for i in items if "set" in i]
    return {ip_address(e) for e in found.get("elem", [])}


@pytest.fixture
def sets(ns):
    run(["nft", TABLES], netns=ns)
    elements = SetElements(ns)
    yield elements
    elements.close()


def test_add_delete_and_read_in_both_families_as_nft_sees_them(ns, sets):
    v4 = [ip_address("198.18.0.2"), ip_address("198.18.0.3")]
    v6 = [ip_address("fd18::2")]
    sets.add("ip", "flt", "peers", v4)
    sets.add("ip", "flt", "peers", v4[:1])  # present already: no error, no change
    sets.add("ip6", "flt", "peers", v6)
    assert nft_elements(ns, "ip") == set(v4)
    assert nft_elements(ns, "ip6") == set(v6)
    assert sets.read("ip", "flt", "peers") == set(v4)
    assert sets.read("ip6", "flt", "peers") == set(v6)
    sets.delete("ip", "flt", "peers", v4[:1])
    assert nft_elements(ns, "ip") == {v4[1]}
    sets.add("ip", "flt", "peers", [])  # nothing to do
    assert sets.read("ip", "flt", "peers") == {v4[1]}


def test_a_change_is_all_or_nothing_and_errors_name_the_set(ns, sets):
    sets.add("ip", "flt", "peers", [ip_address("198.18.0.2")])
    with pytest.raises(KernelError) as err:  # 198.18.0.9 is absent: nothing is deleted
        sets.delete("ip", "flt", "peers", [ip_address("198.18.0.2"), ip_address("198.18.0.9")])
    assert "ip flt peers" in str(err.value) and "No such file" in str(err.value)
    assert nft_elements(ns, "ip") == {ip_address("198.18.0.2")}
    with pytest.raises(KernelError):
        sets.add("ip", "nosuch", "peers", [ip_address("198.18.0.4")])


def test_reading_a_missing_table_or_set_is_none(ns, sets):
    assert sets.read("ip", "nosuch", "peers") is None
    assert sets.read("ip", "flt", "nosuch") is None
    assert sets.read("ip6", "flt", "peers") == set()


def test_a_large_change_spans_several_messages_in_one_batch(ns, sets):
    many = [
        ip_address(f"198.18.{i // 250}.{i % 250 + 1}") for i in range(ELEMENTS_PER_MESSAGE * 2 + 7)
    ]
    sets.add("ip", "flt", "peers", many)
    assert sets.read("ip", "flt", "peers") == set(many)
    assert nft_elements(ns, "ip") == set(many)
    # One absent element in the last message: the whole batch, every message, is refused.
    with pytest.raises(KernelError):
        sets.delete("ip", "flt", "peers", [*many, ip_address("198.18.200.1")])
    assert len(nft_elements(ns, "ip")) == len(many)
    sets.delete("ip", "flt", "peers", many)
    assert sets.read("ip", "flt", "peers") == set()


def test_the_socket_belongs_to_the_namespace_it_was_opened_in(netns_factory, sets, ns):
    other = netns_factory.create("k2")
    run(["nft", TABLES], netns=other)
    sets.add("ip", "flt", "peers", [ip_address("198.18.0.5")])
    assert nft_elements(other, "ip") == set()
    assert nft_elements(ns, "ip") == {ip_address("198.18.0.5")}
