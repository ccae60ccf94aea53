"""NftOwner: the reconciler diffs the peer set, batches element writes and arms the drop rule."""

from __future__ import annotations

import re
from ipaddress import IPv4Address

import pytest

from flannelish.errors import KernelError
from flannelish.node.firewall_owner import NftOwner

from .test_firewall import labels, rules

pytestmark = pytest.mark.unit


def _lease(n: int, ip: str):
    from ipaddress import IPv4Network

    from flannelish.subnet.lease import Lease, LeaseAttrs

    return Lease(IPv4Network(f"10.244.{n}.0/24"), LeaseAttrs(IPv4Address(ip), "vxlan"))


def test_owner_lets_the_reconciler_diff_the_peer_set_and_arms_after_a_synced_pass():
    from flannelish.daemon.reconciler import Reconciler

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    peers = [_lease(2, "198.18.0.2"), _lease(3, "198.18.0.3")]
    rec.reconcile([])  # start-up pass before the watch: table without the drop rule
    assert fake.table is not None and "input" not in fake.table["chains"]
    owner.arm()
    rec.reconcile(peers)  # set filled, still unarmed
    assert fake.table["set"] == {IPv4Address("198.18.0.2"), IPv4Address("198.18.0.3")}
    assert "input" not in fake.table["chains"]
    owner.after_pass()  # end of that pass (the daemon's on_pass hook): arm now
    assert labels(fake.table["chains"]["input"]) == ["anti-spoof: vxlan from non-peers"]
    assert rec.reconcile(peers).changes == 0
    result = rec.reconcile(peers[:1])
    assert result.changes == 1 and fake.table["set"] == {IPv4Address("198.18.0.2")}
    fake.table = None  # deleted by hand: restored with its elements in one pass
    rec.reconcile(peers[:1])
    assert owner.repairs == 1
    assert fake.table["set"] == {IPv4Address("198.18.0.2")}
    assert labels(fake.table["chains"]["input"]) == ["anti-spoof: vxlan from non-peers"]


def test_owner_writes_many_peer_changes_in_one_transaction_per_direction():
    from flannelish.daemon.reconciler import Reconciler

    nft, fake = rules()
    rec = Reconciler([NftOwner(nft)])
    rec.reconcile([])
    many = [_lease(n, f"198.18.1.{n}") for n in range(1, 201)]
    before = len(fake.scripts)
    result = rec.reconcile(many)
    assert result.errors == 0 and result.changes == 200
    assert len(fake.scripts) - before == 1  # not 200 nft processes
    assert len(fake.table["set"]) == 200
    before = len(fake.scripts)
    rec.reconcile(many[:50])
    assert len(fake.scripts) - before == 1 and len(fake.table["set"]) == 50


def test_lease_event_passes_without_the_base_check_still_restore_and_never_arm_early():
    from flannelish.daemon.reconciler import Reconciler

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    peers = [_lease(2, "198.18.0.2")]
    rec.reconcile(peers)
    fake.table = None  # deleted by hand, then a lease event arrives
    result = rec.reconcile(peers, check_base=False)
    assert result.errors == 0 and owner.repairs == 1
    assert fake.table["set"] == {IPv4Address("198.18.0.2")}
    owner.arm()
    real_run = fake.run

    def failing(script: str) -> None:
        if "add element" in script:
            raise KernelError("nftables transaction failed", "injected")
        real_run(script)

    fake.run = failing  # type: ignore[method-assign]
    rec.reconcile([*peers, _lease(3, "198.18.0.3")], check_base=False)
    owner.after_pass()
    assert not nft.armed  # the set is incomplete: arming would drop 198.18.0.3
    fake.run = real_run  # type: ignore[method-assign]
    rec.reconcile([*peers, _lease(3, "198.18.0.3")], check_base=False)
    owner.after_pass()
    assert nft.armed and "input" in fake.table["chains"]


def test_after_pass_from_another_thread_mid_pass_does_not_arm_before_the_set_is_written():
    from flannelish.daemon.reconciler import Reconciler

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    rec.reconcile([])
    owner.arm()
    real_run = fake.run
    seen = []

    def run(script: str) -> None:
        if "add element" in script:  # the set write of this pass is about to happen...
            owner.after_pass()  # ...when the backend's loop reports its own pass
            seen.append(nft.armed)
        real_run(script)

    fake.run = run  # type: ignore[method-assign]
    rec.reconcile([_lease(2, "198.18.0.2")])
    assert seen == [False]
    owner.after_pass()
    assert nft.armed and fake.table["set"] == {IPv4Address("198.18.0.2")}


@pytest.mark.parametrize("check_base", [True, False], ids=["base-check", "lease-event-pass"])
def test_a_restored_table_brings_its_drop_rule_and_its_peers_in_one_transaction(check_base):
    # A table deleted behind our back must not come back armed with an empty set for
    # a moment: every VXLAN packet of a real peer would be dropped until the next write.
    from flannelish.daemon.reconciler import Reconciler

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    peers = [_lease(2, "198.18.0.2"), _lease(3, "198.18.0.3")]
    rec.reconcile([])
    owner.arm()
    rec.reconcile(peers)
    owner.after_pass()
    assert nft.armed
    fake.table = None
    before = len(fake.scripts)
    rec.reconcile(peers, check_base=check_base)
    restore = fake.scripts[before]
    assert "anti-spoof" in restore
    assert re.search(r"add element ip flannelish vxlan_peers \{ 198.18.0.2, 198.18.0.3 \}", restore)
    assert owner.repairs == 1
    assert fake.table["set"] == {IPv4Address("198.18.0.2"), IPv4Address("198.18.0.3")}
