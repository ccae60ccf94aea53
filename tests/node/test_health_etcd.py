"""/readyz follows a real etcd going away and coming back; /metrics parses throughout."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannelish.node.health import HealthServer, NodeState
from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore

pytestmark = pytest.mark.etcd


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_code(url: str, code: int, timeout: float = 20.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        got = get(url)
        if got[0] == code or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_readyz_turns_not_ready_when_etcd_stops_and_ready_again_after(etcd):
    store = EtcdStore(EtcdOptions.from_flags(endpoints=etcd.client_url), timeout=1.0)
    state = NodeState(
        node="n1",
        backend="vxlan",
        etcd_probe=lambda: store.get("/coreos.com/network/config"),
        etcd_timeout=2.0,
        probe_interval=0.0,
    )
    state.set_lease("10.244.1.0/24", time.time() + 3600)
    state.set_subnet_env_written("/run/flannel/subnet.env")
    state.record_reconcile(0.003, 0, 0)
    server = HealthServer(state, "127.0.0.1", 0).start()
    base = "http://{}:{}".format(*server.address)
    try:
        assert wait_code(base + "/readyz", 200)[0] == 200
        etcd.stop()
        code, body = wait_code(base + "/readyz", 503)
        assert code == 503 and "[-]etcd" in body
        families = {f.name for f in text_string_to_metric_families(get(base + "/metrics")[1])}
        assert "flannelish_etcd_request_errors" in families
        etcd.start()
        etcd.wait_healthy()
        code, body = wait_code(base + "/readyz", 200)
        assert code == 200, body
        assert state.metrics.etcd_errors._value.get() >= 1
    finally:
        server.stop()
        store.close()
