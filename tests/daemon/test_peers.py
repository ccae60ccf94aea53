"""PeerTable (watch events -> peer set) and the reconcile loop's start gate."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.daemon.loop import ReconcileLoop
from flannelish.daemon.peers import PeerTable
from flannelish.daemon.reconciler import PassResult
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Event, EventType, Lease, LeaseAttrs

pytestmark = pytest.mark.unit


def lease(n: int, mac: str = "0e:00:00:00:00:01") -> Lease:
    attrs = LeaseAttrs(IPv4Address(f"198.18.0.{n}"), "vxlan", {"VNI": 1, "VtepMAC": mac})
    return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs)


def test_own_subnet_is_never_a_peer():
    table = PeerTable(IPv4Network("10.244.1.0/24"))
    table.apply([Event(EventType.ADDED, lease(1)), Event(EventType.ADDED, lease(2))])
    assert [p.subnet for p in table.snapshot()] == [IPv4Network("10.244.2.0/24")]


def test_empty_snapshot_marks_synced_and_changes_no_peer():
    table = PeerTable()
    assert not table.synced.is_set()
    assert table.apply([]) == set()
    assert table.synced.is_set()


def test_renewal_with_same_attrs_is_no_change_but_new_mac_is():
    table = PeerTable()
    table.apply([Event(EventType.ADDED, lease(2))])
    subnet = LeaseKey(IPv4Network("10.244.2.0/24"))
    assert table.apply([Event(EventType.ADDED, lease(2))]) == set()
    assert table.apply([Event(EventType.ADDED, lease(2, "0e:00:00:00:00:09"))]) == {subnet}
    assert table.apply([Event(EventType.REMOVED, lease(2))]) == {subnet}
    assert table.snapshot() == []


class CountingReconciler:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def reconcile(self, peers, check_base=True, between=None):
        self.seen.append(len(peers))
        return PassResult()


def test_loop_runs_no_pass_until_the_peer_set_is_known():
    table = PeerTable()
    rec = CountingReconciler()
    loop = ReconcileLoop(rec, table.snapshot, 0.02, ready=table.synced.is_set)  # type: ignore[arg-type]
    loop.start()
    try:
        loop.trigger()
        time.sleep(0.15)
        assert rec.seen == []  # an empty table before the snapshot must not wipe peers
        table.apply([Event(EventType.ADDED, lease(2))])
        loop.trigger()
        deadline = time.monotonic() + 2
        while not rec.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.seen and rec.seen[0] == 1
    finally:
        loop.stop()


class FailingOnceReconciler:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def reconcile(self, peers, check_base=True, between=None):
        self.calls.append(check_base)
        return PassResult(errors=1 if len(self.calls) == 1 else 0)


def test_a_pass_with_errors_is_retried_long_before_the_resync_interval():
    rec = FailingOnceReconciler()
    loop = ReconcileLoop(rec, list, 60.0)  # type: ignore[arg-type]
    loop.start()
    try:
        loop.trigger()
        deadline = time.monotonic() + 3
        while len(rec.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rec.calls[:2] == [True, True]  # the retry re-checks the base objects too
    finally:
        loop.stop()


def test_deleted_entries_of_both_families_are_told_apart_from_our_own_deletions():
    """A deleted IPv6 route, neighbour or FDB entry of a current peer wants a repair; one
    of a peer already gone (our own deletion coming back as a notification) does not."""
    from ipaddress import IPv6Address, IPv6Network

    from flannelish.daemon.peers import deleted_entry_wanted

    def dual(n: int) -> Lease:
        attrs = LeaseAttrs(IPv4Address(f"198.18.0.{n}"), "vxlan", {"VNI": 1},
                           IPv6Address(f"fd18::{n}"), {"VNI": 1})  # fmt: skip
        return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs,
                     ipv6_subnet=IPv6Network(f"fd44:0:0:{n}::/64"))  # fmt: skip

    table = PeerTable()
    table.apply([Event(EventType.ADDED, dual(2)), Event(EventType.ADDED, dual(3))])
    table.apply([Event(EventType.REMOVED, dual(3))])

    def wanted(dst) -> bool:
        return deleted_entry_wanted(table, 24, dst, 64)

    assert wanted(IPv6Network("fd44:0:0:2::/64")) and wanted(IPv6Address("fd44:0:0:2::"))
    assert not wanted(IPv6Network("fd44:0:0:3::/64"))
    assert not wanted(IPv6Address("fd44:0:0:3::"))
    assert wanted(IPv4Network("10.244.2.0/24")) and not wanted(IPv4Network("10.244.3.0/24"))
    assert not wanted(IPv4Address("10.244.3.0"))
    # Not a VXLAN neighbour address, or no IPv6 network known: a full pass, to be safe.
    assert wanted(IPv6Address("fd44:0:0:3::5")) and wanted(None)
    assert deleted_entry_wanted(table, 24, IPv6Address("fd44:0:0:3::"), None)
