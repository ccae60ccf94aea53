"""watch_leases against a real etcd: restarts and compaction lose and repeat nothing."""

from __future__ import annotations

import json
import threading
from ipaddress import IPv4Network, IPv6Network

import pytest
from lease_helpers import CONFIG, EventCollector, node_attrs

from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import EventType
from flannelish.subnet.manager import SubnetManager

pytestmark = pytest.mark.etcd

PREFIX = "/coreos.com/network/subnets/"


def current_revision(member) -> int:
    return int(json.loads(member.etcdctl("get", "/", "-w", "json").stdout)["header"]["revision"])


def restart(member) -> None:
    member.stop()
    member.start()
    member.wait_healthy()


def test_etcd_restarted_mid_watch_events_resume_without_duplicates(etcd, registries):
    writer = SubnetManager(registries(etcd.client_url))
    writer.registry.put_config(CONFIG)
    peer = writer.acquire(node_attrs(2))
    watcher = EventCollector(SubnetManager(registries(etcd.client_url)))
    try:
        assert [e.type for e in watcher.wait_for(1)] == [EventType.ADDED]
        restart(etcd)
        newcomer = writer.acquire(node_attrs(3))
        writer.release(peer)
        events = watcher.wait_for(3)
        assert [(e.type, e.lease.subnet) for e in events] == [
            (EventType.ADDED, peer.subnet),
            (EventType.ADDED, newcomer.subnet),
            (EventType.REMOVED, peer.subnet),
        ]
        assert events[2].previous == node_attrs(2)
        writer.acquire(node_attrs(4))
        assert len(watcher.wait_for(4)) == 4  # still live, nothing repeated
    finally:
        watcher.close()


def test_compaction_during_a_watch_relists_and_emits_the_missed_changes(etcd, registries):
    writer = SubnetManager(registries(etcd.client_url))
    writer.registry.put_config(CONFIG)
    changing = writer.acquire(node_attrs(2))
    leaving = writer.acquire(node_attrs(3))
    stop = threading.Event()
    events = SubnetManager(registries(etcd.client_url)).watch_leases(stop)
    try:
        assert len(next(events)) == 2  # the snapshot
        # The consumer is not reading; its stream drops with the restart, and by the
        # time it resumes, the history it needs has been compacted away.
        restart(etcd)
        key = f"{PREFIX}{changing.subnet.network_address}-24"
        new_attrs = node_attrs(2).__class__(
            node_attrs(2).public_ip, "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:aa"}
        )
        etcd.etcdctl("put", key, new_attrs.to_json())  # MAC changed behind the watch
        etcd.etcdctl("del", f"{PREFIX}{leaving.subnet.network_address}-24")
        joined = writer.acquire(node_attrs(4))
        etcd.etcdctl("compact", str(current_revision(etcd)))
        batch = next(events)
        got = {(e.type, e.lease.subnet, e.previous.vtep_mac if e.previous else None) for e in batch}
        assert got == {
            (EventType.ADDED, changing.subnet, "0a:00:00:00:00:02"),
            (EventType.REMOVED, leaving.subnet, "0a:00:00:00:00:03"),
            (EventType.ADDED, joined.subnet, None),
        }
        # After the relist the watch is live again from the snapshot revision.
        writer.release(joined)
        assert [(e.type, e.lease.subnet) for e in next(events)] == [
            (EventType.REMOVED, joined.subnet)
        ]
    finally:
        stop.set()
        events.close()


def test_one_nodes_listing_reads_only_its_key_and_its_dual_stack_form(etcd, registries):
    registry = registries(etcd.client_url)
    value = node_attrs(2).to_json()
    for key in ("10.244.1.0-24", "10.244.1.0-24&fd44::-64", "10.244.10.0-24", "10.244.2.0-24"):
        etcd.etcdctl("put", PREFIX + key, value)
    etcd.etcdctl("put", PREFIX + "10.244.1.0-240", "not a lease key")
    leases, revision = registry.list_leases(subnet=IPv4Network("10.244.1.0/24"))
    assert sorted(str(x.key) for x in leases) == ["10.244.1.0/24", "10.244.1.0/24&fd44::/64"]
    assert revision == current_revision(etcd)
    assert registry.bad_leases == []  # a narrow listing says nothing about the others
    dual = LeaseKey(IPv4Network("10.244.1.0/24"), IPv6Network("fd44::/64"))
    leases, _ = registry.list_leases(subnet=dual)
    assert [x.key for x in leases] == [dual]
    assert len(registry.list_leases()[0]) == 4
