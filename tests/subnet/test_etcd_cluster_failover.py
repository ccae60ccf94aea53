"""A 3-member etcd cluster: losing the member a node talks to interrupts nothing."""

from __future__ import annotations

import time

import pytest
from lease_helpers import CONFIG, EventCollector, key_json, node_attrs

from flannelish.subnet.keeper import LeaseKeeper
from flannelish.subnet.lease import EventType
from flannelish.subnet.manager import SubnetManager

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


def test_member_stopped_and_restarted_renewals_and_watch_carry_on(etcd_cluster, registries):
    members = etcd_cluster.members
    node_registry = registries(etcd_cluster.endpoints)
    node_registry.put_config(CONFIG)
    node = SubnetManager(node_registry, lease_ttl=4)  # renewed every 2 s
    own = node.acquire(node_attrs(1))
    renewals: list = []
    keeper = LeaseKeeper(node, own, 60, renewals.append, on_fatal=renewals.append)
    keeper.start()
    watcher = EventCollector(node, exclude=own.subnet)  # same client as the keeper
    try:
        watcher.wait_snapshot()
        used = node_registry.store.current_endpoint
        victim = next(m for m in members if m.client_url == used)
        survivors = [m for m in members if m is not victim]
        writer = SubnetManager(registries([m.client_url for m in survivors]))

        victim.stop()
        peers = [writer.acquire(node_attrs(i)) for i in (2, 3)]
        writer.release(peers[0])
        expected = [
            (EventType.ADDED, peers[0].subnet),
            (EventType.ADDED, peers[1].subnet),
            (EventType.REMOVED, peers[0].subnet),
        ]
        watcher.wait_for(3)
        assert [(e.type, e.lease.subnet) for e in watcher.events] == expected
        assert node_registry.store.current_endpoint != used

        time.sleep(5)  # longer than the TTL: only renewals through the survivors keep it
        key = f"/coreos.com/network/subnets/{own.subnet.network_address}-24"
        assert key_json(survivors[0], key)["value"] == node_attrs(1).to_json()
        assert renewals and all(getattr(r, "subnet", None) == own.subnet for r in renewals)

        victim.start()
        victim.wait_healthy(timeout=30)
        late = writer.acquire(node_attrs(4))
        watcher.wait_for(4)
        time.sleep(0.5)  # room for any duplicate to show up
        assert [(e.type, e.lease.subnet) for e in watcher.events] == [
            *expected,
            (EventType.ADDED, late.subnet),
        ]
        assert keeper.error is None
    finally:
        watcher.close()
        keeper.stop()


def test_quorum_lost_and_regained_the_watch_catches_up(etcd_cluster, registries):
    members = etcd_cluster.members
    node = SubnetManager(registries(etcd_cluster.endpoints))
    node.registry.put_config(CONFIG)
    watcher = EventCollector(node)
    try:
        watcher.wait_snapshot()
        used = node.registry.store.current_endpoint
        others = [m for m in members if m.client_url != used]
        for m in others:  # the member we watch through is left without a leader
            m.stop()
        time.sleep(3)
        for m in others:
            m.start()
        for m in others:
            m.wait_healthy(timeout=30)
        writer = SubnetManager(registries([m.client_url for m in others]))
        lease = writer.acquire(node_attrs(2))
        events = watcher.wait_for(1, timeout=20)
        assert [(e.type, e.lease.subnet) for e in events] == [(EventType.ADDED, lease.subnet)]
    finally:
        watcher.close()
