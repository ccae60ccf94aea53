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


def test_a_pass_keeps_the_leases_own_addresses_not_the_listings_copies():
    """Between passes the owner remembers the set it found by the leases' address
    objects: the listing's copies are a pass's garbage and must not outlive it."""
    from flannelish.daemon.reconciler import Reconciler

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    peers = [_lease(n, f"198.18.0.{n}") for n in range(2, 6)]
    rec.reconcile(peers)
    fake.table["set"] = {IPv4Address(str(ip)) for ip in fake.table["set"]}  # fresh copies
    fake.table["set"].add(IPv4Address("198.18.0.99"))  # and one no lease has
    rec.reconcile(peers)
    ours = {id(p.attrs.public_ip) for p in peers}
    kept = owner._batch.actual
    assert {ip for ip in kept if id(ip) in ours} == {p.attrs.public_ip for p in peers}
    assert IPv4Address("198.18.0.99") in kept
    assert fake.table["set"] == {p.attrs.public_ip for p in peers}


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


class _Listings:
    """Counts the table listings a FakeNft answers (a per-event write must list nothing)."""

    def __init__(self, fake):
        self.count = 0
        real = fake.listing

        def listing(*what, **kw):
            self.count += 1
            return real(*what, **kw)

        fake.listing = listing


def _synced(peers):
    from flannelish.daemon.reconciler import Reconciler

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    rec.reconcile(peers)
    return rec, fake, {p.key: p for p in peers}


def test_a_lease_event_adds_or_deletes_only_its_own_element_without_listing_the_table():
    peers = [_lease(n, f"198.18.1.{n}") for n in range(2, 40)]
    rec, fake, table = _synced(peers)
    listings = _Listings(fake)
    before = len(fake.scripts)
    new = _lease(50, "198.18.1.50")
    table[new.key] = new
    result = rec.apply_peers([new.key], table.get)
    assert result.changes == 1 and not result.needs_full
    assert fake.scripts[before:] == ["add element ip flannelish vxlan_peers { 198.18.1.50 }\n"]
    del table[peers[0].key]
    rec.apply_peers([peers[0].key], table.get)
    assert fake.scripts[-1] == "delete element ip flannelish vxlan_peers { 198.18.1.2 }\n"
    assert len(fake.scripts) - before == 2 and listings.count == 0
    assert fake.table["set"] == {p.attrs.public_ip for p in table.values()}


def test_a_public_ip_two_peers_share_stays_while_one_of_them_remains():
    a, b, c = _lease(2, "198.18.0.9"), _lease(3, "198.18.0.9"), _lease(4, "198.18.0.4")
    rec, fake, table = _synced([a, b, c])
    assert fake.table["set"] == {IPv4Address("198.18.0.9"), IPv4Address("198.18.0.4")}
    del table[a.key]
    result = rec.apply_peers([a.key], table.get)
    assert result.changes == 0 and result.errors == 0  # b still needs it
    assert IPv4Address("198.18.0.9") in fake.table["set"]
    assert rec.holds("nft-peer", IPv4Address("198.18.0.9"))
    moved = _lease(3, "198.18.0.10")  # b moves to another address: now the old one goes
    table[b.key] = moved
    rec.apply_peers([b.key], table.get)
    assert fake.table["set"] == {IPv4Address("198.18.0.10"), IPv4Address("198.18.0.4")}
    assert not rec.holds("nft-peer", IPv4Address("198.18.0.9"))


def test_a_full_pass_never_undoes_the_element_changes_of_events_applied_during_it():
    # Events arrive mid-pass, after its plan and before its listing (one new peer,
    # one gone): the listing then disagrees with the plan on both.
    peers = [_lease(n, f"198.18.1.{n}") for n in range(2, 12)]
    rec, fake, table = _synced(peers)
    gone, new = peers[0], _lease(60, "198.18.1.60")
    stale = _lease(61, "198.18.1.61")  # in the kernel, not wanted: the pass deletes it
    fake.table["set"].add(stale.attrs.public_ip)
    missing = peers[5].attrs.public_ip  # deleted by hand: the pass adds it back
    fake.table["set"].discard(missing)
    calls = []

    def between() -> None:
        calls.append(1)
        if len(calls) == len(peers):  # the pass has planned every peer (one tick each)
            del table[gone.key]
            table[new.key] = new
            rec.apply_peers([gone.key, new.key], table.get)

    import flannelish.daemon.reconciler as reconciler

    old_slice, reconciler.SLICE_SECONDS = reconciler.SLICE_SECONDS, 0.0
    try:
        rec.reconcile(peers, check_base=False, between=between)  # plans `gone`, not `new`
    finally:
        reconciler.SLICE_SECONDS = old_slice
    assert len(calls) > len(peers)
    ips = fake.table["set"]
    assert new.attrs.public_ip in ips and gone.attrs.public_ip not in ips
    assert stale.attrs.public_ip not in ips and missing in ips  # the pass did its own work
    assert rec.reconcile(list(table.values())).changes == 0  # and left nothing to settle
