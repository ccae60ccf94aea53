"""cni.masq through a scripted nft: the batches it sends and the error codes it keeps."""

from __future__ import annotations

from typing import Any

import pytest
from flannelish.cni import masq

from flannelish.errors import CniCode, KernelError, NotAvailableError, cni_code_for

pytestmark = pytest.mark.unit


class ScriptedNft:
    """Records scripts; listings and failures are set by the test."""

    def __init__(self, listings: dict[tuple[str, ...], Any] | None = None) -> None:
        self.scripts: list[str] = []
        self.listings = listings or {}
        self.error: Exception | None = None

    def run(self, script: str) -> None:
        if self.error is not None:
            raise self.error
        self.scripts.append(script)

    def listing(self, *what: str) -> list[dict[str, Any]] | None:
        if self.error is not None:
            raise self.error
        return self.listings.get(what)


def test_setup_is_one_batch_with_the_reference_chain_name():
    nft = ScriptedNft()
    masq.setup("net", "ctr1", ["10.244.3.2"], ["10.244.3.0/24"], nft=nft)
    (script,) = nft.scripts
    chain = masq.chain_name("net", "ctr1")
    assert f"add element ip flannelish_cni pods {{ 10.244.3.2 : jump {chain} }}" in script
    assert f"add rule ip flannelish_cni {chain} ip daddr 10.244.3.0/24 accept" in script


def test_teardown_deletes_only_what_the_map_points_at_the_container():
    chain = masq.chain_name("net", "ctr1")
    elems = [["10.244.3.2", {"jump": {"target": chain}}], ["10.244.3.9", {"jump": {"target": "x"}}]]
    nft = ScriptedNft({("map", "ip", masq.TABLE, "pods"): [{"map": {"elem": elems}}]})
    masq.teardown("net", "ctr1", nft=nft)
    (script,) = nft.scripts
    assert "delete element ip flannelish_cni pods { 10.244.3.2 }" in script
    assert f"delete chain ip flannelish_cni {chain}" in script


def test_teardown_without_our_table_writes_nothing():
    nft = ScriptedNft()
    masq.teardown("net", "ctr1", nft=nft)
    nft.error = KernelError("cannot list nftables map", "Operation not permitted")
    masq.teardown("net", "ctr1", nft=nft)
    assert nft.scripts == []


def test_exists_needs_the_masquerade_rule():
    chain = masq.chain_name("net", "ctr1")
    key = ("chain", "ip", masq.TABLE, chain)
    rule = {"rule": {"chain": chain, "expr": [{"match": {}}, {"masquerade": None}]}}
    assert masq.exists("net", "ctr1", nft=ScriptedNft({key: [{"chain": {}}, rule]}))
    assert not masq.exists("net", "ctr1", nft=ScriptedNft({key: [{"chain": {}}]}))
    assert not masq.exists("net", "ctr1", nft=ScriptedNft())


def test_a_failed_batch_names_the_container_and_nft_stderr():
    nft = ScriptedNft()
    nft.error = KernelError("nftables transaction failed", "Error: syntax error")
    with pytest.raises(KernelError) as err:
        masq.setup("net", "ctr1", ["10.244.3.2"], [], nft=nft)
    assert str(err.value) == "set up masquerade for ctr1: nft failed: Error: syntax error"
    assert cni_code_for(err.value) == CniCode.INTERNAL


@pytest.mark.parametrize(
    "call",
    [
        lambda nft: masq.setup("net", "ctr1", ["10.244.3.2"], [], nft=nft),
        lambda nft: masq.teardown("net", "ctr1", nft=nft),
        lambda nft: masq.exists("net", "ctr1", nft=nft),
    ],
)
def test_missing_nft_stays_an_internal_error_not_try_again(call):
    nft = ScriptedNft()
    nft.error = NotAvailableError("nft not found", "install the nftables package")
    with pytest.raises(KernelError) as err:
        call(nft)
    assert cni_code_for(err.value) == CniCode.INTERNAL
    assert "nft not found" in str(err.value)
