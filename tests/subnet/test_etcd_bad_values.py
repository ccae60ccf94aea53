"""Bad and oversized lease values against a real etcd.

Before: a 5000-`[` value raised RecursionError in the watch thread and at
start-up while acquiring; three ~1.4 MB values made every listing fail with
"Received message larger than max" (start-up exit 4).  Now the listing is
paged, the values are bad leases, and the subnet manager acquires and
watches with them present.
"""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Network

import pytest
from lease_helpers import CONFIG, EventCollector, node_attrs

from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore, WatchResponseTooLarge
from flannelish.subnet.lease import EventType
from flannelish.subnet.manager import SubnetManager
from flannelish.subnet.registry import EtcdRegistry
from flannelish.subnet.watch import Snapshot, lease_changes

pytestmark = pytest.mark.etcd

PREFIX = "/coreos.com/network/subnets/"
BIG = 1_400_000  # under etcd's default 1.5 MiB request limit; three exceed gRPC's 4 MiB
DEEP = b"[" * 5000
GRPC_DEFAULT = 4 * 1024 * 1024


def big_value(i: int) -> bytes:
    return b'{"PublicIP":"198.18.0.%d","pad":"' % (50 + i) + b"x" * BIG + b'"}'


def test_startup_acquire_and_watch_with_deep_and_oversized_values_present(etcd, registries):
    writer = registries(etcd.client_url)
    writer.put_config(CONFIG)
    peer = SubnetManager(writer).acquire(node_attrs(2))
    writer.store.put(PREFIX + "10.244.7.0-24", DEEP)
    for i in range(3):
        writer.store.put(PREFIX + f"10.244.{200 + i}.0-24", big_value(i))

    # A daemon starting now: acquire (lists every lease), then its peer watch.
    registry = registries(etcd.client_url)
    manager = SubnetManager(registry)
    lease = manager.acquire(node_attrs(1), previous_subnet=IPv4Network("10.244.7.0/24"))
    assert str(lease.subnet) not in {"10.244.7.0/24", "10.244.200.0/24", "10.244.201.0/24"}
    watcher = EventCollector(manager, exclude=lease.subnet)
    try:
        # Generous: listing ~4 MB of values is slow on a loaded machine (it timed out at
        # 15 s once in CI with no error logged; the message now shows where it waited).
        first = watcher.wait_for(1, timeout=60)
        assert [(e.type, e.lease.subnet) for e in first] == [(EventType.ADDED, peer.subnet)]
        bad = {b.key.rsplit("/", 1)[1]: b.reason for b in registry.bad_leases}
        assert set(bad) == {
            "10.244.7.0-24",
            "10.244.200.0-24",
            "10.244.201.0-24",
            "10.244.202.0-24",
        }
        assert "levels deep" in bad["10.244.7.0-24"]
        assert "over the 65536-byte limit" in bad["10.244.200.0-24"]

        # Item 8: the peer's value turns bad -> REMOVED with its previous attributes.
        writer.store.put(writer.keys.subnet(peer.subnet), DEEP)
        events = watcher.wait_for(2)
        assert (events[1].type, events[1].lease.subnet) == (EventType.REMOVED, peer.subnet)
        assert events[1].previous == peer.attrs
        # A good lease written after the bad ones is still delivered.
        newcomer = SubnetManager(writer).acquire(node_attrs(3))
        events = watcher.wait_for(3)
        assert (events[2].type, events[2].lease.subnet) == (EventType.ADDED, newcomer.subnet)
        assert watcher.error is None
    finally:
        watcher.stop.set()


def test_listing_three_large_values_works_even_at_grpcs_4mib_default(etcd, registries):
    registry = registries(etcd.client_url)
    for i in range(3):
        registry.store.put(PREFIX + f"10.244.{200 + i}.0-24", big_value(i))
    registry.store.put(PREFIX + "10.244.9.0-24", node_attrs(9).to_json().encode())
    small = EtcdRegistry(
        EtcdOptions.from_flags(endpoints=etcd.client_url),
        EtcdStore(
            EtcdOptions.from_flags(endpoints=etcd.client_url), max_receive_bytes=GRPC_DEFAULT
        ),
    )
    try:
        listing = small.list_all()
        assert [str(x.subnet) for x in listing.leases] == ["10.244.9.0/24"]
        assert len(listing.bad) == 3 and listing.revision > 0
        # One value alone above the receive limit: its key is still reported, as oversized.
        tiny = EtcdStore(
            EtcdOptions.from_flags(endpoints=etcd.client_url), max_receive_bytes=1 << 20
        )
        try:
            kvs, _ = tiny.get_prefix(PREFIX)
            assert sorted(kv.key for kv in kvs if kv.oversized) == sorted(
                PREFIX + f"10.244.{200 + i}.0-24" for i in range(3)
            )
            assert [kv.key for kv in kvs if not kv.oversized] == [PREFIX + "10.244.9.0-24"]
        finally:
            tiny.close()
    finally:
        small.close()


def test_paged_listing_returns_every_key_once_at_one_revision(etcd, registries):
    store = registries(etcd.client_url).store
    keys = [PREFIX + f"10.244.{i}.0-24" for i in range(1, 26)]
    for key in keys:
        store.put(key, b"{}")
    store.put("/coreos.com/network/subnets0", b"outside the prefix")
    kvs, revision = store.get_prefix(PREFIX, page_keys=4)
    assert sorted(kv.key for kv in kvs) == sorted(keys)
    assert len({kv.key for kv in kvs}) == 25
    whole, same = store.get_prefix(PREFIX)
    assert same == revision and [kv.key for kv in whole] == [kv.key for kv in kvs]


def test_watch_catch_up_batch_over_the_receive_limit_is_a_relist_signal(etcd, registries):
    store = EtcdStore(
        EtcdOptions.from_flags(endpoints=etcd.client_url), max_receive_bytes=GRPC_DEFAULT
    )
    try:
        _, start = store.get_prefix(PREFIX)
        for i in range(3):
            store.put(PREFIX + f"10.244.{200 + i}.0-24", big_value(i))
        stream = store.watch(PREFIX, start + 1)  # replays all three in one response
        try:
            with pytest.raises(WatchResponseTooLarge):
                for _ in range(20):
                    stream.next_events(1.0)
        finally:
            stream.close()
    finally:
        store.close()


def test_watch_through_a_too_large_batch_relists_and_keeps_going(etcd, registries):
    writer = registries(etcd.client_url)
    writer.put_config(CONFIG)
    small = EtcdRegistry(
        EtcdOptions.from_flags(endpoints=etcd.client_url),
        EtcdStore(
            EtcdOptions.from_flags(endpoints=etcd.client_url), max_receive_bytes=GRPC_DEFAULT
        ),
    )
    stop = threading.Event()
    changes = lease_changes(small, stop)
    try:
        first = next(changes)  # the snapshot; the watch opens on the next step
        assert isinstance(first, Snapshot) and first.leases == []
        for i in range(3):
            writer.store.put(PREFIX + f"10.244.{200 + i}.0-24", big_value(i))
        peer = SubnetManager(writer).acquire(node_attrs(4))
        # The watch replays 3 large revisions in one response (> 4 MiB): it re-lists instead.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            item = next(changes)
            if isinstance(item, Snapshot):
                break
        assert isinstance(item, Snapshot), "no re-list after the oversized watch response"
        assert [x.subnet for x in item.leases] == [peer.subnet]
        assert len(small.bad_leases) == 3
        # ... and resumes after the listing: a later change arrives as a change.
        SubnetManager(writer).release(peer)
        while time.monotonic() < deadline:
            item = next(changes)
            if item:
                break
        assert [(c.subnet, c.lease) for c in item] == [(peer.subnet, None)]
    finally:
        stop.set()
        changes.close()
        small.close()
