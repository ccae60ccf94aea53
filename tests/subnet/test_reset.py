"""etcd recreated without its data (InMemoryRegistry.reset): the watch re-lists, the keeper
re-acquires the same subnet once the config is back, vanished peers are held, not removed."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.subnet.keeper import LeaseKeeper
from flannelish.subnet.lease import EventType, LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.subnet.watch import Snapshot, lease_changes
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit

CONFIG = b'{"Network":"10.5.0.0/16"}'
A = LeaseAttrs(IPv4Address("198.18.0.1"), "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"})
B = LeaseAttrs(IPv4Address("198.18.0.2"), "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"})
C = LeaseAttrs(IPv4Address("198.18.0.3"), "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:03"})
GONE = IPv4Network("10.5.99.0/24")  # a peer that never comes back


def wait_for(fn, timeout=5.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or fn}")


@pytest.fixture
def reg():
    reg = InMemoryRegistry()
    reg.put_config(CONFIG)
    return reg


@pytest.fixture
def stop():
    stop = threading.Event()
    yield stop
    stop.set()


def test_watch_relists_when_the_revision_goes_backwards(reg, stop):
    mgr = SubnetManager(reg)
    for i in range(5):
        mgr.acquire(LeaseAttrs(IPv4Address(f"198.18.0.{i + 10}"), "vxlan", {}))
    stream = lease_changes(reg, stop)
    first = next(stream)
    assert isinstance(first, Snapshot) and len(first.leases) == 5 and not first.reset
    reg.reset()  # empty, revision 1: the old resume point is in its future
    reg.put_raw(IPv4Network("10.5.7.0/24"), A)
    item = next(x for x in stream if isinstance(x, Snapshot))
    assert item.reset
    assert [str(x.subnet) for x in item.leases] == ["10.5.7.0/24"]
    assert item.revision == reg.revision


def test_keeper_and_peer_watch_recover_after_etcd_is_recreated_empty(reg, stop, caplog):
    caplog.set_level("INFO")
    ma, mb = SubnetManager(reg, lease_ttl=3600), SubnetManager(reg, lease_ttl=3600)
    la, lb = ma.acquire(A), mb.acquire(B)
    reg.put_raw(GONE, C)
    changed: dict[str, list] = {"a": [], "b": []}
    fatal: list[BaseException] = []
    keepers = [
        LeaseKeeper(ma, la, 60, changed["a"].append, fatal.append, 0.2),
        LeaseKeeper(mb, lb, 60, changed["b"].append, fatal.append, 0.2),
    ]
    for k in keepers:
        k.start()
    batches: list[list] = []
    got = threading.Event()

    def watch() -> None:
        for batch in ma.watch_leases(stop, exclude=la.subnet, reset_grace_s=0.5):
            batches.append(batch)
            got.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        wait_for(lambda: batches, what="snapshot")
        assert sorted(str(e.lease.subnet) for e in batches[0]) == sorted(
            [str(lb.subnet), str(GONE)]
        )
        del batches[:]

        reg.reset()
        time.sleep(1.0)  # no config yet: nobody can re-register, nobody gives up
        assert not fatal and not changed["a"] and not changed["b"]
        assert not batches, "peers were removed while etcd had no network config"
        assert "network config not found in etcd at key /coreos.com/network/config" in caplog.text

        reg.put_config(CONFIG)  # the operator puts the config back
        na = wait_for(lambda: changed["a"] and changed["a"][-1], what="A re-acquired")
        nb = wait_for(lambda: changed["b"] and changed["b"][-1], what="B re-acquired")
        assert (na.subnet, na.attrs) == (la.subnet, A)
        assert (nb.subnet, nb.attrs) == (lb.subnet, B)
        assert reg.get_lease(la.subnet).attrs == A  # type: ignore[union-attr]
        assert reg.get_lease(lb.subnet).attrs == B  # type: ignore[union-attr]
        assert not fatal

        # The peer watch: B re-registered (ADDED, same attrs, no removal in between);
        # the peer that never came back is REMOVED once the grace after the config ran out.
        def events():
            return [(e.type, e.lease.subnet) for batch in batches for e in batch]

        wait_for(lambda: (EventType.REMOVED, GONE) in events(), what="GONE removed")
        assert (EventType.ADDED, lb.subnet) in events()
        assert (EventType.REMOVED, lb.subnet) not in events()
        assert (EventType.ADDED, la.subnet) not in events()  # our own subnet is never a peer
        assert "ETCD WAS RECREATED WITHOUT ITS DATA" in caplog.text
        assert "LEASE LOST" in caplog.text
    finally:
        for k in keepers:
            k.stop()


def test_periodic_own_key_check_catches_a_reset_the_revision_cannot_show(reg, stop):
    mgr = SubnetManager(reg, lease_ttl=3600)
    lease = mgr.acquire(A)
    changed: list = []
    keeper = LeaseKeeper(mgr, lease, 60, changed.append, None, 0.2, check_interval_s=0.2)
    keeper.start()
    try:
        time.sleep(0.3)
        # A new cluster whose revision is already past ours: the watch cannot tell.
        reg.reset(revision=reg.revision + 100)
        reg.put_config(CONFIG)
        new = wait_for(lambda: changed and changed[-1], what="re-acquired")
        assert new.subnet == lease.subnet and new.attrs == A
    finally:
        keeper.stop()
