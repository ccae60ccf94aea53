"""Password auth over plain http with expiring tokens: the client re-authenticates by itself."""

from __future__ import annotations

import time

import pytest
from lease_helpers import CONFIG, EventCollector, node_attrs

from flannelish.subnet.lease import EventType
from flannelish.subnet.manager import SubnetManager
from flannelish.testing.etcd import EtcdMember

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def auth_etcd():
    member = EtcdMember(name="auth", extra_args=["--auth-token-ttl", "1"])
    try:
        member.start()
        member.wait_healthy()
        member.etcdctl("user", "add", "root", "--new-user-password=pw")
        member.etcdctl("auth", "enable")
        yield member
    finally:
        member.destroy()


def test_expired_tokens_are_renewed_for_requests_and_watch_reconnects(auth_etcd, registries):
    registry = registries(auth_etcd.client_url, username="root", password="pw")
    registry.put_config(CONFIG)
    manager = SubnetManager(registry)
    watcher = EventCollector(manager)
    try:
        watcher.wait_snapshot()
        time.sleep(2.5)  # the token has expired
        first = manager.acquire(node_attrs(1))  # a request with a stale token
        assert watcher.wait_for(1)[0].lease.subnet == first.subnet
        # Drop the watch while the token is stale: the reconnect must log in again.
        auth_etcd.stop()
        time.sleep(2.5)
        auth_etcd.start()
        auth_etcd.wait_healthy(ctl_args=["--user=root:pw"])
        second = SubnetManager(registries(auth_etcd.client_url, username="root", password="pw"))
        lease = second.acquire(node_attrs(2))
        events = watcher.wait_for(2)
        assert [(e.type, e.lease.subnet) for e in events] == [
            (EventType.ADDED, first.subnet),
            (EventType.ADDED, lease.subnet),
        ]
    finally:
        watcher.close()
