"""watch_leases on the in-memory registry: snapshot, live events, resume, compaction diff."""

from __future__ import annotations

import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.subnet.lease import EventType, LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.subnet.watch import PeerTracker
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit

NET = IPv4Network
OWN = NET("10.5.1.0/24")


def attrs(ip: str, mac: str = "0a:00:00:00:00:01") -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(ip), "vxlan", {"VNI": 1, "VtepMAC": mac})


@pytest.fixture
def setup():
    reg = InMemoryRegistry()
    reg.put_config(b'{"Network":"10.5.0.0/16"}')
    stop = threading.Event()
    yield reg, SubnetManager(reg), stop
    stop.set()


def summary(batch):
    return [
        (e.type, str(e.lease.subnet), e.previous.vtep_mac if e.previous else None) for e in batch
    ]


def test_first_batch_is_the_snapshot_without_our_own_subnet(setup):
    reg, mgr, stop = setup
    reg.put_raw(OWN, attrs("198.18.0.1"))
    reg.put_raw(NET("10.5.2.0/24"), attrs("198.18.0.2"))
    events = mgr.watch_leases(stop, exclude=OWN)
    assert summary(next(events)) == [(EventType.ADDED, "10.5.2.0/24", None)]


def test_empty_snapshot_is_still_delivered(setup):
    _, mgr, stop = setup
    assert next(mgr.watch_leases(stop)) == []


def test_live_add_change_and_remove_carry_previous_attrs(setup):
    reg, mgr, stop = setup
    events = mgr.watch_leases(stop, exclude=OWN)
    next(events)
    peer = NET("10.5.2.0/24")
    reg.put_raw(peer, attrs("198.18.0.2", "0a:00:00:00:00:02"))
    assert summary(next(events)) == [(EventType.ADDED, "10.5.2.0/24", None)]
    reg.put_raw(peer, attrs("198.18.0.2", "0a:00:00:00:00:03"))
    assert summary(next(events)) == [(EventType.ADDED, "10.5.2.0/24", "0a:00:00:00:00:02")]
    reg.expire(peer)
    batch = next(events)
    assert summary(batch) == [(EventType.REMOVED, "10.5.2.0/24", "0a:00:00:00:00:03")]
    assert batch[0].lease.attrs.vtep_mac == "0a:00:00:00:00:03"


def test_events_on_our_own_subnet_are_filtered(setup):
    reg, mgr, stop = setup
    events = mgr.watch_leases(stop, exclude=OWN)
    next(events)
    reg.put_raw(OWN, attrs("198.18.0.1"))
    reg.put_raw(NET("10.5.3.0/24"), attrs("198.18.0.3"))
    assert summary(next(events)) == [(EventType.ADDED, "10.5.3.0/24", None)]


def test_dropped_connection_resumes_without_missing_or_repeating(setup):
    reg, mgr, stop = setup
    events = mgr.watch_leases(stop)
    next(events)
    reg.put_raw(NET("10.5.2.0/24"), attrs("198.18.0.2"))
    assert len(next(events)) == 1
    reg.break_watches()
    reg.put_raw(NET("10.5.3.0/24"), attrs("198.18.0.3"))
    reg.expire(NET("10.5.2.0/24"))
    got = summary(next(events))
    if len(got) < 2:
        got += summary(next(events))
    assert got == [
        (EventType.ADDED, "10.5.3.0/24", None),
        (EventType.REMOVED, "10.5.2.0/24", "0a:00:00:00:00:01"),
    ]


def test_compaction_relists_and_emits_the_diff_including_attr_changes(setup):
    reg, mgr, stop = setup
    reg.put_raw(NET("10.5.2.0/24"), attrs("198.18.0.2", "0a:00:00:00:00:02"))
    reg.put_raw(NET("10.5.3.0/24"), attrs("198.18.0.3"))
    events = mgr.watch_leases(stop)
    assert len(next(events)) == 2
    # While disconnected: one peer changes its MAC, one leaves, one joins; history compacted.
    reg.break_watches()
    reg.put_raw(NET("10.5.2.0/24"), attrs("198.18.0.2", "0a:00:00:00:00:22"))
    reg.expire(NET("10.5.3.0/24"))
    reg.put_raw(NET("10.5.4.0/24"), attrs("198.18.0.4"))
    reg.compact()
    got = sorted(summary(next(events)), key=lambda e: e[1])
    assert got == [
        (EventType.ADDED, "10.5.2.0/24", "0a:00:00:00:00:02"),  # MAC changed in the gap
        (EventType.REMOVED, "10.5.3.0/24", "0a:00:00:00:00:01"),
        (EventType.ADDED, "10.5.4.0/24", None),
    ]


def test_watch_returns_when_stopped(setup):
    _, mgr, stop = setup
    events = mgr.watch_leases(stop)
    next(events)
    threading.Timer(0.2, stop.set).start()
    assert list(events) == []


def test_unknown_peer_removal_is_ignored():
    from flannelish.subnet.registry import Change

    tracker = PeerTracker()
    assert tracker.apply([Change(NET("10.5.9.0/24"), None, 5)]) == []


def test_renewal_with_same_attrs_is_added_without_previous():
    from flannelish.subnet.lease import Lease
    from flannelish.subnet.registry import Change

    tracker = PeerTracker()
    lease = Lease(NET("10.5.9.0/24"), attrs("198.18.0.9"), None, 1)
    tracker.apply([Change(lease.subnet, lease, 2)])
    again = tracker.apply([Change(lease.subnet, lease, 3)])
    assert [(e.type, e.previous) for e in again] == [(EventType.ADDED, None)]


def test_an_outage_logs_one_warning_then_one_resumed_line(setup, caplog):
    reg, mgr, stop = setup
    events = mgr.watch_leases(stop)
    next(events)
    caplog.set_level("INFO", logger="flannelish.subnet.watch")
    reg.fail_next(4)  # four reconnects fail (backoff 0.1+0.2+0.4+0.8 s)
    reg.break_watches()
    reg.put_raw(NET("10.5.2.0/24"), attrs("198.18.0.2"))
    assert summary(next(events)) == [(EventType.ADDED, "10.5.2.0/24", None)]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    warnings = [m for level, m in lines if level == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("lease watch interrupted; reconnecting")
    assert any(level == "INFO" and "lease watch resumed after" in m for level, m in lines)


def test_exclude_may_follow_a_moving_own_subnet(setup):
    reg, mgr, stop = setup
    own = {"subnet": OWN}
    events = mgr.watch_leases(stop, exclude=lambda: own["subnet"])
    next(events)
    own["subnet"] = NET("10.5.7.0/24")  # the keeper re-acquired elsewhere
    reg.put_raw(NET("10.5.7.0/24"), attrs("198.18.0.1"))
    reg.put_raw(OWN, attrs("198.18.0.3"))  # the old subnet now belongs to a peer
    assert summary(next(events)) == [(EventType.ADDED, "10.5.1.0/24", None)]


def test_first_batch_waits_for_a_real_listing_when_etcd_is_down_at_start(setup):
    # An empty first batch while etcd is down would look like "no peers" and could
    # make a consumer delete every peer route.
    reg, mgr, stop = setup
    reg.put_raw(NET("10.5.2.0/24"), attrs("198.18.0.2"))
    reg.fail_next(3)
    assert summary(next(mgr.watch_leases(stop))) == [(EventType.ADDED, "10.5.2.0/24", None)]


def _counting_listings(reg):
    calls = []
    real = reg.list_all

    def list_all(with_expiry=False):
        calls.append(with_expiry)
        return real(with_expiry)

    reg.list_all = list_all
    reg.list_leases = lambda with_expiry=False, subnet=None: (lambda x: (x.leases, x.revision))(
        list_all(with_expiry)
    )
    return calls


def test_a_kept_acquire_listing_seeds_the_watch_and_misses_nothing_after_it(setup):
    reg, mgr, stop = setup
    mgr.acquire(attrs("198.18.0.2", "0a:00:00:00:00:02"), NET("10.5.2.0/24"))
    calls = _counting_listings(reg)
    own = mgr.acquire(attrs("198.18.0.1"), NET("10.5.1.0/24"), keep_listing=True)
    assert len(calls) == 1
    # Written after acquire()'s listing, before the watch starts: must still arrive.
    mgr.acquire(attrs("198.18.0.3", "0a:00:00:00:00:03"), NET("10.5.3.0/24"))
    events = mgr.watch_leases(stop, exclude=own.subnet)
    assert summary(next(events)) == [(EventType.ADDED, "10.5.2.0/24", None)]
    assert summary(next(events)) == [(EventType.ADDED, "10.5.3.0/24", None)]
    # One listing in all: the watch replayed from the kept listing's revision.
    assert len(calls) == 2  # the third acquire's own listing
    # Used once: a second watch lists afresh.
    next(mgr.watch_leases(stop, exclude=own.subnet))
    assert len(calls) == 3


def test_without_keep_listing_the_watch_lists_for_itself(setup):
    reg, mgr, stop = setup
    calls = _counting_listings(reg)
    own = mgr.acquire(attrs("198.18.0.1"), NET("10.5.1.0/24"))
    next(mgr.watch_leases(stop, exclude=own.subnet))
    assert len(calls) == 2


def test_a_stale_kept_listing_is_not_used(setup, monkeypatch):
    import flannelish.subnet.manager as manager_module

    reg, mgr, stop = setup
    calls = _counting_listings(reg)
    own = mgr.acquire(attrs("198.18.0.1"), NET("10.5.1.0/24"), keep_listing=True)
    monkeypatch.setattr(manager_module, "LISTING_REUSE_S", -1.0)
    next(mgr.watch_leases(stop, exclude=own.subnet))
    assert len(calls) == 2
