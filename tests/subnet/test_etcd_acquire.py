"""Acquisition, reservations, renewal and loss against a real etcd."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from lease_helpers import CONFIG, EventCollector, key_json, node_attrs

from flannelish.errors import OutOfSubnetsError
from flannelish.subnet.keeper import LeaseKeeper
from flannelish.subnet.lease import EventType, LeaseAttrs
from flannelish.subnet.manager import SubnetManager

pytestmark = pytest.mark.etcd


def _acquire_at_once(managers: list[SubnetManager], attrs_of: Callable[[int], LeaseAttrs]) -> list:
    """Every manager acquires at the same moment (node i advertising attrs_of(i));
    the leases, after asserting that none failed."""
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(managers))

    def node(i: int) -> None:
        barrier.wait()
        try:
            results[i] = managers[i].acquire(attrs_of(i))
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=node, args=(i,)) for i in range(len(managers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r for r in results.values() if isinstance(r, BaseException)] == []
    return list(results.values())


def test_twenty_concurrent_acquirers_get_twenty_distinct_subnets(etcd, registries):
    # A pool of 24 subnets for 20 nodes: most random picks collide, so races are lost and retried.
    first = registries(etcd.client_url)
    first.put_config(
        b'{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.24.0"}'
    )
    managers = [SubnetManager(registries(etcd.client_url)) for _ in range(20)]
    results = _acquire_at_once(managers, lambda i: node_attrs(i + 1))
    subnets = {r.subnet for r in results}
    assert len(subnets) == 20
    listed = {x.subnet: x.attrs.public_ip for x in managers[0].list_leases()}
    assert len(listed) == 20 and set(listed) == subnets


def test_slash28_pool_reports_exhaustion_with_counts(etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(b'{"Network":"10.244.0.0/28"}')
    etcd.etcdctl(
        "put", "/coreos.com/network/subnets/10.244.0.4-30", node_attrs(50).to_json()
    )  # a reservation
    manager = SubnetManager(registry)
    got = {manager.acquire(node_attrs(i)).subnet for i in (1, 2)}
    assert got == {IPv4Network("10.244.0.8/30"), IPv4Network("10.244.0.12/30")}
    with pytest.raises(OutOfSubnetsError) as info:
        manager.acquire(node_attrs(3))
    message = str(info.value)
    assert "out of subnets" in message and "2 leased, 1 reserved" in message


def test_reservation_is_honoured_and_still_leaseless_after_renewal(etcd, manager):
    key = "/coreos.com/network/subnets/10.244.77.0-24"
    etcd.etcdctl("put", key, node_attrs(7).to_json())
    lease = manager.acquire(node_attrs(7))
    assert lease.subnet == IPv4Network("10.244.77.0/24") and lease.reserved
    renewed = manager.renew(lease)
    assert renewed.reserved
    assert key_json(etcd, key) == {"value": node_attrs(7).to_json(), "lease": 0}
    # New attributes (a new VTEP MAC) are written, still without a lease.
    changed = node_attrs(7).__class__(
        IPv4Address("198.18.0.7"), "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:99"}
    )
    manager.renew(renewed.__class__(renewed.subnet, changed, None, 0, None, renewed.mod_revision))
    assert key_json(etcd, key)["lease"] == 0
    assert "0a:00:00:00:00:99" in key_json(etcd, key)["value"]


def test_lease_revoked_with_etcdctl_is_reacquired_on_the_same_subnet(etcd, manager):
    lease = manager.acquire(node_attrs(1))
    changes = []
    done = threading.Event()

    def on_change(new):
        changes.append(new)
        done.set()

    keeper = LeaseKeeper(manager, lease, 3600, on_change, on_fatal=lambda e: changes.append(e))
    keeper.start()
    try:
        time.sleep(0.3)
        etcd.etcdctl("lease", "revoke", f"{lease.lease_id:x}")
        assert done.wait(10), "keeper did not re-acquire"
        new = changes[-1]
        assert new.subnet == lease.subnet and new.lease_id != lease.lease_id
        key = f"/coreos.com/network/subnets/{lease.subnet.network_address}-24"
        assert key_json(etcd, key)["lease"] == new.lease_id
    finally:
        keeper.stop()


def test_short_ttl_lease_expires_and_peers_see_it_removed(etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(CONFIG)
    watcher = EventCollector(SubnetManager(registries(etcd.client_url)))
    try:
        watcher.wait_snapshot()
        lease = SubnetManager(registry, lease_ttl=2).acquire(node_attrs(1))
        t0 = time.monotonic()
        events = watcher.wait_for(2, timeout=10)
        assert [(e.type, e.lease.subnet) for e in events] == [
            (EventType.ADDED, lease.subnet),
            (EventType.REMOVED, lease.subnet),
        ]
        assert events[1].previous == node_attrs(1)
        assert 1.0 < time.monotonic() - t0 < 6.0
    finally:
        watcher.close()


def test_keeper_keeps_a_short_ttl_lease_alive_past_its_ttl(etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(CONFIG)
    manager = SubnetManager(registry, lease_ttl=2)
    lease = manager.acquire(node_attrs(1))
    renewals = []
    keeper = LeaseKeeper(manager, lease, 60, renewals.append, on_fatal=renewals.append)
    keeper.start()
    try:
        time.sleep(4.5)
        key = f"/coreos.com/network/subnets/{lease.subnet.network_address}-24"
        assert key_json(etcd, key)["value"] == node_attrs(1).to_json()
        assert len(renewals) >= 3 and all(r.subnet == lease.subnet for r in renewals)
    finally:
        keeper.stop()


def test_leases_since_a_revision_are_only_those_written_after_it(etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(CONFIG)
    manager = SubnetManager(registry)
    manager.acquire(node_attrs(1))
    _, listed_at = registry.list_leases()
    later = SubnetManager(registries(etcd.client_url)).acquire(node_attrs(2))
    etcd.etcdctl("put", "/coreos.com/network/subnets/10.244.99.0-24", node_attrs(3).to_json())
    etcd.etcdctl("put", "/coreos.com/network/subnets/10.244.98.0-24", "not a lease")
    recent = registry.leases_since(listed_at + 1)
    assert recent is not None
    assert {x.subnet for x in recent} == {later.subnet, IPv4Network("10.244.99.0/24")}
    assert registry.leases_since(listed_at + 100) == []


def test_concurrent_dual_stack_acquirers_share_no_half(etcd, registries):
    """Each dual-stack node checks after its create for a key sharing one half,
    reading only the leases written since its listing."""
    first = registries(etcd.client_url)
    first.put_config(
        b'{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.16.0",'
        b'"EnableIPv6":true,"IPv6Network":"fd44::/48","IPv6SubnetLen":64,'
        b'"IPv6SubnetMin":"fd44:0:0:1::","IPv6SubnetMax":"fd44:0:0:10::"}'
    )
    managers = [SubnetManager(registries(etcd.client_url)) for _ in range(12)]

    def dual(i: int) -> LeaseAttrs:
        v4 = node_attrs(i + 1)
        return LeaseAttrs(
            v4.public_ip, "vxlan", v4.backend_data, IPv6Address(f"fd18::{i + 1}"),
            {"VNI": 1, "VtepMAC": f"0a:00:00:00:01:{i + 1:02x}"},
        )  # fmt: skip

    keys = [r.key for r in _acquire_at_once(managers, dual)]
    assert len({k.v4 for k in keys}) == 12 and len({k.v6 for k in keys}) == 12
    listed = {x.key for x in managers[0].list_leases()}
    assert listed == set(keys)
