"""NodeState readiness, metrics and the HTTP endpoints (loopback, ephemeral port)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannelish.errors import ConfigError, NotAvailableError
from flannelish.node.health import HealthServer, NodeState

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def ready_state(**kwargs) -> NodeState:
    state = NodeState(node="n1", backend="vxlan", device="flannel.1", **kwargs)
    state.set_lease("10.244.3.0/24", None, public_ip="198.18.0.1", network="10.244.0.0/16")
    state.set_subnet_env_written("/run/flannel/subnet.env")
    state.record_reconcile(0.01, changes=3, errors=0)
    return state


def failing(names: list) -> set[str]:
    return {c.name for c in names if not c.ok}


def test_not_ready_until_lease_subnet_env_and_a_clean_pass():
    state = NodeState()
    ok, checks = state.ready()
    assert not ok
    assert failing(checks) == {"lease", "reconcile", "subnet-env"}
    state.set_lease("10.244.3.0/24", None)
    state.set_subnet_env_written("/x/subnet.env")
    assert failing(state.ready()[1]) == {"reconcile"}
    state.record_reconcile(0.002, changes=0, errors=0)
    assert state.ready()[0]


def test_reconcile_errors_expired_or_lost_lease_and_extra_checks_make_it_not_ready():
    clock = Clock()
    state = ready_state(clock=clock)
    state.record_reconcile(0.01, changes=0, errors=2)
    ok, checks = state.ready()
    assert not ok and "2 error(s)" in next(c.detail for c in checks if c.name == "reconcile")
    state.record_reconcile(0.01, changes=0, errors=0)
    state.set_lease("10.244.3.0/24", clock.now + 5)
    assert state.ready()[0]
    clock.now += 10
    assert failing(state.ready()[1]) == {"lease"}
    state.set_lease("10.244.3.0/24", clock.now + 3600)
    state.lease_lost()
    assert failing(state.ready()[1]) == {"lease"}
    state.set_lease("10.244.3.0/24", clock.now + 3600)
    state.set_check("nftables", False, "table missing")
    assert failing(state.ready()[1]) == {"nftables"}
    state.set_check("nftables", True)
    assert state.ready()[0]
    with pytest.raises(ValueError):
        state.set_check("lease", True)


def test_etcd_probe_failure_and_timeout_are_not_ready_and_counted():
    healthy = threading.Event()
    healthy.set()
    hang = threading.Event()

    def probe() -> None:
        if hang.is_set():
            threading.Event().wait(2)
        if not healthy.is_set():
            raise ConnectionError("connection refused")

    state = ready_state(etcd_probe=probe, etcd_timeout=0.2, probe_interval=0)
    assert state.ready()[0]
    healthy.clear()
    ok, checks = state.ready()
    assert not ok and "connection refused" in next(c.detail for c in checks if c.name == "etcd")
    healthy.set()
    hang.set()
    ok, checks = state.ready()
    assert not ok and "no answer within 0.2s" in next(c.detail for c in checks if c.name == "etcd")
    hang.clear()
    threads = threading.active_count()
    ok, checks = state.ready()  # the hung probe is still running: no second thread
    assert not ok and "still waiting" in next(c.detail for c in checks if c.name == "etcd")
    assert threading.active_count() == threads
    state._probe_thread.join(5)  # the hung call returns (the 2 s wait ends)
    assert state.ready()[0]
    assert state.metrics.etcd_errors._value.get() == 2


def test_etcd_probe_answer_is_cached_between_scrapes():
    calls = []
    state = ready_state(etcd_probe=lambda: calls.append(1), probe_interval=60)
    for _ in range(5):
        state.ready()
    assert len(calls) == 1


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_parse_with_the_prometheus_parser_and_carry_the_issue_names():
    state = ready_state()
    state.set_lease("10.244.3.0/24", 1_900_000_000.0)
    state.set_peers(in_etcd=3, programmed=2, skipped={"10.244.9.0/24": "not on-link"})
    state.record_reconcile(0.2, changes=0, errors=1)
    state.record_etcd_error()
    state.record_watch_restart()
    fams = _families(state.metrics_text().decode())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples
    }
    assert samples[("flannelish_peers", (("backend", "vxlan"), ("state", "programmed")))] == 2
    assert samples[("flannelish_peers", (("backend", "vxlan"), ("state", "skipped")))] == 1
    assert samples[("flannelish_reconcile_runs_total", ())] == 2
    assert samples[("flannelish_reconcile_errors_total", ())] == 1
    assert samples[("flannelish_reconcile_repairs_total", ())] == 3
    assert samples[("flannelish_reconcile_duration_seconds_count", ())] == 2
    assert samples[("flannelish_lease_expiry_timestamp_seconds", ())] == 1_900_000_000.0
    assert samples[("flannelish_etcd_request_errors_total", ())] == 1
    assert samples[("flannelish_watch_restarts_total", ())] == 1
    assert samples[("flannelish_ready", ())] == 0  # the last pass had an error


@pytest.fixture
def served() -> Iterator[tuple[NodeState, str]]:
    state = NodeState(node="n1", backend="host-gw")
    server = HealthServer(state, "127.0.0.1", 0).start()
    host, port = server.address
    try:
        yield state, f"http://{host}:{port}"
    finally:
        server.stop()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_http_endpoints(served):
    state, base = served
    assert get(base + "/healthz")[0::2] == (200, "flannelish is running\n")
    code, _, body = get(base + "/readyz")
    assert code == 503 and "[-]lease no lease held" in body and body.endswith("not ready\n")
    state.set_lease("10.244.3.0/24", None)
    state.set_subnet_env_written("/x/subnet.env")
    state.record_reconcile(0.001, 0, 0)
    code, _, body = get(base + "/readyz")
    assert code == 200 and body.endswith("ready\n") and "[+]subnet-env /x/subnet.env" in body
    code, ctype, body = get(base + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert "flannelish_reconcile_runs" in _families(body)
    code, ctype, body = get(base + "/status")
    doc = json.loads(body)
    assert ctype == "application/json"
    assert (
        doc["version"] == 1 and doc["ready"] is True and doc["lease"]["subnet"] == "10.244.3.0/24"
    )
    assert doc["backend"] == "host-gw"
    assert get(base + "/nope")[0] == 404


def test_server_argument_errors():
    state = NodeState()
    with pytest.raises(ConfigError):
        HealthServer(state, "127.0.0.1", 70000)
    first = HealthServer(state, "127.0.0.1", 0)
    try:
        with pytest.raises(NotAvailableError, match="cannot listen"):
            HealthServer(state, "127.0.0.1", first.address[1])
    finally:
        first.stop()


def test_skipped_peers_as_a_count_reach_the_metric_and_status():
    state = ready_state()
    state.set_peers(in_etcd=4, programmed=3, skipped=1)
    fams = _families(state.metrics_text().decode())
    skipped = [s for s in fams["flannelish_peers"].samples if s.labels["state"] == "skipped"]
    assert skipped[0].value == 1
    assert state.status()["peers"] == {
        "in_etcd": 4,
        "programmed": 3,
        "skipped": {},
        "skipped_count": 1,
    }


def test_bad_leases_are_read_from_their_source_at_each_scrape():
    state = ready_state()
    bad = {"/coreos.com/network/subnets/10.244.7.0-24": "lease value is not valid JSON"}
    state.set_bad_lease_source(lambda: dict(bad))
    assert state.status()["bad_leases"] == bad
    assert "flannelish_bad_leases 1.0" in state.metrics_text().decode()
    bad.clear()
    assert state.status()["bad_leases"] == {}
    state.set_bad_lease_source(lambda: 1 / 0)  # a broken source never breaks a scrape
    assert state.status()["bad_leases"] == {}
