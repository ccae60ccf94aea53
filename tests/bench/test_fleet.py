"""bench/fleet.py's aggregation: storm results, fan-out times, renewal rates, metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import fleet  # noqa: E402
from fleet import NodeResult  # noqa: E402


def test_storm_summary_counts_distinct_duplicates_failures_and_retries():
    results = [
        NodeResult(0, "10.1.0.0/26", 1.0, 0),
        NodeResult(1, "10.1.0.64/26", 2.0, 3),
        NodeResult(2, "10.1.0.64/26", 3.0, 1),  # a duplicate: two holders of one subnet
        NodeResult(3, None, 9.0, 30, "could not acquire a subnet after 30 attempts"),
    ]
    s = fleet.storm_summary(results, total_s=9.5)
    assert s["nodes"] == 4 and s["total_s"] == 9.5
    assert s["distinct"] == 2
    assert s["duplicates"] == {"10.1.0.64/26": [1, 2]}
    assert s["failed"] == 1 and s["errors"] == ["could not acquire a subnet after 30 attempts"]
    assert s["retries_total"] == 34 and s["retries_max"] == 30
    assert s["retry_histogram"] == {0: 1, 1: 1, 3: 1, 30: 1}
    # Acquire times only of nodes that got a subnet.
    assert s["acquire_max_s"] == 3.0 and s["acquire_p50_s"] == 2.0


def test_storm_summary_of_a_clean_storm():
    results = [NodeResult(i, f"10.1.{i}.0/26", 0.1, 0) for i in range(10)]
    s = fleet.storm_summary(results, 1.0)
    assert s["distinct"] == 10 and not s["duplicates"] and s["failed"] == 0
    assert s["retries_per_node"] == 0.0


def test_fanout_summary_takes_the_last_watcher_per_write_and_counts_missing():
    started = {"a": 10.0, "b": 20.0}
    times = {
        (0, "a"): 10.010,
        (1, "a"): 10.050,
        (0, "b"): 20.020,  # watcher 1 never saw b
        (0, "other"): 5.0,  # a key the run did not write is ignored
    }
    f = fleet.fanout_summary(times, started, watchers=2)
    assert f["missing"] == 1
    assert f["all_seen_ms"] == pytest.approx([50.0])  # b was not seen by all: no time
    assert sorted(f["delivery_ms"]) == pytest.approx([10.0, 20.0, 50.0])


def test_renewal_writes_per_second():
    # 5000 nodes, 3 writes per renewal, renewed every 23 h.
    rate = fleet.renewal_writes_per_s(5000, 3.0, 24 * 3600, 3600)
    assert rate == pytest.approx(5000 * 3 / (23 * 3600))
    # The margin is capped at half the TTL, as the LeaseKeeper does.
    assert fleet.renewal_writes_per_s(10, 1.0, 10, 3600) == pytest.approx(10 / 5)


def test_metric_total_sums_labelled_samples_and_ignores_lookalikes():
    text = "\n".join([
        "# HELP etcd_server_proposals_committed_total The total number",
        "# TYPE etcd_server_proposals_committed_total gauge",
        "etcd_server_proposals_committed_total 1234",
        'etcd_mvcc_put_total{a="b"} 7',
        'etcd_mvcc_put_total{a="c"} 3',
        "etcd_mvcc_put_total_extra 100",
        "etcd_mvcc_put_total{broken} x",
    ])  # fmt: skip
    assert fleet.metric_total(text, "etcd_server_proposals_committed_total") == 1234
    assert fleet.metric_total(text, "etcd_mvcc_put_total") == 10
    assert fleet.metric_total(text, "absent") == 0


def test_per_peer_bytes_and_percentiles():
    assert fleet.per_peer_bytes(40_000, 50_000, 5000) == pytest.approx(2048)
    assert fleet.per_peer_bytes(50_000, 40_000, 10) == 0  # RSS shrank: no negative cost
    assert fleet.per_peer_bytes(1, 2, 0) == 0
    assert fleet.pct([], 99) == 0
    assert fleet.pct([3.0, 1.0, 2.0], 50) == 2.0
    assert fleet.pct(list(range(1, 101)), 99) == 99


def test_span_is_first_start_to_last_end():
    assert fleet.span([{"start": 5.0, "end": 7.0}, {"start": 4.0, "end": 6.5}]) == 3.0


def _res(nodes: int = 5000) -> dict:
    results = [NodeResult(i, f"10.1.{i}.0/26", 0.5 + i / 10, i % 3) for i in range(20)]
    daemon = {
        "env_s": 0.4, "routes_s": 2.0, "VmHWM": 51200, "VmRSS": 50000, "rss_env_kb": 40000,
        "rss_synced_kb": 49000, "per_peer_b": 1843.2, "idle_cpu_s_per_h": 36.0,
    }  # fmt: skip
    alone = {"all_seen_ms": [3.0, 4.0], "product_ms": [3.0, 5.0], "missing": 0}
    fan = {"all_seen_ms": [50.0, 90.0], "product_ms": [20.0, 80.0], "missing": 0}
    return {
        "spec": {"nodes": nodes, "watchers": 1000},
        "notes": ["flanneld skipped: FLANNELD_BIN is not set (or not executable)"],
        "load": [2.0, 3.0],
        "fanout": {"alone": alone, "fanout": fan},
        "storm": {**fleet.storm_summary(results, 4.0), "raw_puts_s": 0.5, "in_etcd": 20},
        "renewals": {"writes_per_renewal": 3.0},
        "iproute2_s": 0.5,
        "daemons": {"flannelish": daemon, "flanneld": dict(daemon, routes_s=2.5)},
        "release": {"seconds": 1.0, "routes_gone_s": 2.0},
    }


def test_results_are_written_as_a_bench_document_and_plotted(tmp_path: Path) -> None:
    import benchjson
    import report

    pytest.importorskip("matplotlib")
    results, out = tmp_path / "results", tmp_path / "report"
    fleet.write_json(str(results / "fleet.json"), _res())
    doc = benchjson.load(results / "fleet.json")
    figs = doc["figures"]
    assert doc["bench"] == "fleet" and doc["params"] == {"nodes": 5000, "watchers": 1000}
    assert figs["fleet.cold.routes_s"]["ratio"] == 4.0
    assert figs["fleet.cold.routes_s"]["goal"] == "<= 2.0x"
    assert figs["fleet.cold.routes_vs_flanneld"]["ratio"] == 0.8
    assert figs["fleet.fanout.all_seen.p99"]["goal"] == "< 100 ms"
    assert figs["fleet.storm.distinct"]["ratio"] == pytest.approx(20 / 20)
    assert figs["fleet.steady.renewal_writes_per_s"]["value"] == pytest.approx(
        5000 * 3 / (23 * 3600), rel=1e-3
    )
    assert len(doc["samples"]["fleet.storm.acquire"]) == 20
    report.render(results, out)
    assert (out / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "summary.md").read_text()
    assert "| fleet.cold.routes_s | 2.00 | s | 0.50 (iproute2 -batch) | 4.00x | <= 2.0x |" in text
    assert "| fleet.per_peer_b | 1843 | B |  |  |  |" in text  # the goal is on the population slope
    assert "fleet: no results, skipped" not in text
