"""LeaseKeeper on the in-memory registry: renewal timing, loss and re-acquisition."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.errors import EtcdError, LeaseLostError
from flannelish.subnet.keeper import LeaseKeeper
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit

NET = IPv4Network
ME = LeaseAttrs(IPv4Address("198.18.0.1"), "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"})


class Recorder:
    def __init__(self):
        self.changes: list[Lease] = []
        self.fatal: list[BaseException] = []
        self.event = threading.Event()

    def on_change(self, lease):
        self.changes.append(lease)
        self.event.set()

    def on_fatal(self, exc):
        self.fatal.append(exc)
        self.event.set()

    def wait(self, timeout=5.0):
        assert self.event.wait(timeout), "keeper did not report in time"
        self.event.clear()


@pytest.fixture
def world():
    reg = InMemoryRegistry()
    reg.put_config(b'{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}')
    mgr = SubnetManager(reg, lease_ttl=2)
    rec = Recorder()
    keepers = []

    def start(lease, margin=3600.0, retry=0.2):
        keeper = LeaseKeeper(mgr, lease, margin, rec.on_change, rec.on_fatal, retry)
        keeper.start()
        keepers.append(keeper)
        return keeper

    yield reg, mgr, rec, start
    for keeper in keepers:
        keeper.stop()


def test_renews_at_expiry_minus_margin_capped_at_half_the_ttl(world):
    reg, mgr, rec, start = world
    lease = mgr.acquire(ME)
    t0 = time.time()
    start(lease)  # margin 1 h > TTL 2 s: renewal after ~1 s
    rec.wait()
    assert 0.7 < time.time() - t0 < 2.0
    renewed = rec.changes[-1]
    assert renewed.subnet == lease.subnet and renewed.lease_id != lease.lease_id
    assert reg.live_lease_ids == {renewed.lease_id}


def test_deleted_lease_is_reacquired_on_the_same_subnet(world):
    reg, mgr, rec, start = world
    lease = mgr.acquire(ME)
    start(lease)
    time.sleep(0.3)
    reg.expire(lease.subnet)  # revoked / deleted / expired
    rec.wait()
    assert rec.changes[-1].subnet == lease.subnet
    assert reg.get_lease(lease.subnet).attrs == ME  # type: ignore[union-attr]


def test_lost_lease_whose_subnet_was_taken_moves_to_another_subnet(world):
    reg, mgr, rec, start = world
    lease = mgr.acquire(ME)
    keeper = start(lease, margin=1.0)
    time.sleep(0.3)
    other = LeaseAttrs(IPv4Address("198.18.0.2"))
    with reg._cond:  # delete and re-take atomically, before the keeper can react
        reg._delete_locked(reg._leases[lease.key])
        reg._put_locked(lease.subnet, None, other, None)
    rec.wait()
    assert rec.changes[-1].subnet != lease.subnet
    assert keeper.lease.subnet == rec.changes[-1].subnet


def test_lost_lease_with_a_full_pool_is_fatal_lease_lost(world):
    reg, mgr, rec, start = world
    lease = mgr.acquire(ME)
    start(lease)
    time.sleep(0.3)
    with reg._cond:
        reg._delete_locked(reg._leases[lease.key])
        for subnet in (NET("10.5.1.0/24"), NET("10.5.2.0/24")):
            reg._put_locked(subnet, None, LeaseAttrs(IPv4Address("198.18.0.9")), None)
    rec.wait()
    assert len(rec.fatal) == 1 and isinstance(rec.fatal[0], LeaseLostError)
    assert "out of subnets" in str(rec.fatal[0])
    assert rec.fatal[0].exit_code == 6


def test_reservation_is_never_renewed(world):
    reg, mgr, rec, start = world
    reg.put_raw(NET("10.5.2.0/24"), ME)
    lease = mgr.acquire(ME)
    assert lease.reserved
    rev = reg.revision
    start(lease)
    time.sleep(1.5)
    assert rec.changes == [] and reg.revision == rev


def test_failed_renewal_is_retried_after_the_retry_interval(world):
    reg, mgr, rec, start = world
    lease = mgr.acquire(ME)
    calls: list[float] = []
    original = reg.replace_lease

    def flaky(current, attrs, ttl):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise EtcdError("etcd is unreachable (simulated)")
        return original(current, attrs, ttl)

    reg.replace_lease = flaky  # type: ignore[method-assign]
    start(lease, retry=0.3)
    rec.wait()
    assert len(calls) == 2
    assert 0.25 < calls[1] - calls[0] < 1.0
    assert rec.changes[-1].lease_id != lease.lease_id


def test_stop_ends_the_thread(world):
    _, mgr, _, start = world
    keeper = start(mgr.acquire(ME))
    keeper.stop()
    assert not keeper.is_alive()


def test_reacquisition_advertises_the_attrs_the_daemon_set_last(world):
    reg, mgr, rec, start = world
    lease = mgr.acquire(ME)
    start(lease)
    new_mac = LeaseAttrs(ME.public_ip, "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:99"})
    mgr.renew(Lease(lease.subnet, new_mac, None, lease.lease_id, None, lease.mod_revision))
    time.sleep(0.3)
    reg.expire(lease.subnet)
    rec.wait()
    assert rec.changes[-1].attrs == new_mac
    assert reg.get_lease(lease.subnet).attrs == new_mac  # type: ignore[union-attr]
