"""bench/report.py renders whatever results exist (small fixture documents)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import benchjson  # noqa: E402
import report  # noqa: E402

pytest.importorskip("matplotlib")


def _cni(path: Path) -> None:
    out = benchjson.Results("cni", str(path), rounds=3, batches=1)
    for op in ("ADD", "DEL"):
        for conc in (1, 8):
            for variant, scale in (("reference", 2.0), ("daemon", 1.0)):
                xs = [scale * x for x in (3.0, 4.0, 5.0, 9.0)]
                out.samples(f"cni.{op}.c{conc}.{variant}", xs, "ms")
            out.figure(f"cni.{op}.c{conc}.daemon.p99", 9.0, "ms", 18.0, "reference", "<= 1.0x")
    out.note("daemon-pip: 1 failed calls")
    out.write()


def _scale(path: Path, peers: int, sync: float) -> None:
    out = benchjson.Results("scale", str(path), peers=peers)
    out.figure("scale.sync_s", sync, "s", sync / 2, "iproute2 -batch")
    out.figure("scale.baseline_s", sync / 2, "s")
    out.figure("scale.hwm_mb", 40 + peers / 1000, "MB")
    out.write()


def test_results_document_is_flat_and_documented(tmp_path: Path) -> None:
    _cni(tmp_path / "cni.json")
    doc = benchjson.load(tmp_path / "cni.json")
    assert doc["format"] == benchjson.FORMAT and doc["bench"] == "cni"
    fig = doc["figures"]["cni.ADD.c1.daemon.p99"]
    assert fig == {
        "value": 9.0,
        "unit": "ms",
        "baseline": 18.0,
        "baseline_name": "reference",
        "ratio": 0.5,
        "goal": "<= 1.0x",
    }
    assert doc["samples"]["cni.DEL.c8.reference"] == [6.0, 8.0, 10.0, 18.0]
    assert doc["sample_units"]["cni.DEL.c8.reference"] == "ms"
    assert len(doc["host"]["loadavg_end"]) == 3 and doc["host"]["seconds"] >= 0


def test_without_a_path_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = benchjson.Results("cni", None)
    out.figure("x", 1, "ms")
    out.write()
    assert list(tmp_path.iterdir()) == []


def test_report_renders_what_exists_and_skips_the_rest_with_a_line(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "report"
    _cni(results / "cni.json")
    _scale(results / "scale-100.json", 100, 0.2)
    _scale(results / "scale-1000.json", 1000, 0.8)
    (results / "junk.json").write_text(json.dumps({"format": "other"}))
    skipped = report.render(results, out)
    assert {p.name for p in out.glob("*.png")} == {"cni-latency.png", "peers.png", "cold-sync.png"}
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "summary.md").read_text()
    assert "| cni.ADD.c1.daemon.p99 | 9.00 | ms | 18.0 (reference) | 0.50x | <= 1.0x |" in text
    assert "| scale.sync_s | 0.80 | s | 0.40 (iproute2 -batch) | 2.00x |" in text
    assert "![CNI ADD/DEL latency CDFs vs the reference plugins](cni-latency.png)" in text
    assert "- daemon-pip: 1 failed calls" in text
    assert "load average" in text
    for line in ("convergence: no results, skipped", "datapath: no results, skipped"):
        assert line in skipped and line in text
    assert any(line.startswith("junk.json: skipped") for line in skipped)


def test_report_with_no_results_at_all_says_so(tmp_path: Path) -> None:
    skipped = report.render(tmp_path / "missing", tmp_path / "out")
    assert any("no results in" in line for line in skipped)
    assert list((tmp_path / "out").glob("*.png")) == []
    assert "cni: no results, skipped" in (tmp_path / "out" / "summary.md").read_text()


def test_population_json_of_convergence_is_read_and_plotted(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "report"
    results.mkdir()
    daemon = {"env_s": 0.4, "routes_s": 2.0, "VmHWM": 51200, "idle_cpu_pct": 0.5}
    raw = {
        "peers": 5000,
        "events": 3,
        "iproute2_s": 0.5,
        "iproute2_nexthops_s": 0.25,
        "load": [3.0, 4.0],
        "daemons": {"flannelish": daemon, "flanneld": dict(daemon, routes_s=2.5, VmHWM=24576)},
        "add": {"flannelish": [4.0, 5.0, 6.0], "flanneld": [5.0, 5.0, 10.0]},
        "delete": {"flannelish": [4.0], "flanneld": [5.0]},
        "watch": [1.0, 2.0],
    }
    (results / "population-5000.json").write_text(json.dumps(raw))
    report.render(results, out)
    assert {p.name for p in out.glob("*.png")} == {
        "convergence-cdf.png",
        "peers.png",
        "cold-sync.png",
    }
    text = (out / "summary.md").read_text()
    # flannelish against iproute2 writing the entries it writes (routes through nexthop
    # objects), and beside it against Flannel's; flanneld against Flannel's.
    same = "| 0.25 (iproute2 -batch, the same entries) | 8.00x | <= 2.0x |"
    assert f"| population.cold.routes_s | 2.00 | s {same}" in text
    flannels = "| 0.50 (iproute2 -batch, Flannel's entries) | 4.00x |"
    assert f"| population.cold.routes_vs_flannel_entries | 2.00 | s {flannels}" in text
    assert "| population.flanneld.cold.routes_s | 2.50 | s | 0.50 (iproute2 -batch, the" in text
    assert "| population.add.p99 | 6.00 | ms | 10.0 (flanneld) | 0.60x | <= 1.0x |" in text
    assert "| population.flanneld.hwm_mb | 24.0 | MB |" in text


def test_memory_per_peer_is_the_rss_slope_between_population_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for peers, mine, theirs in ((1000, 30 * 1024, 18 * 1024), (5000, 38 * 1024, 20 * 1024)):
        daemon = {"env_s": 0.4, "routes_s": 2.0, "VmHWM": mine, "VmRSS": mine}
        raw = {
            "peers": peers,
            "events": 3,
            "iproute2_s": 0.5,
            "daemons": {"flannelish": daemon, "flanneld": dict(daemon, VmRSS=theirs)},
            "add": {},
            "delete": {},
        }
        (results / f"population-{peers}.json").write_text(json.dumps(raw))
    docs, problems = report.load_all(results)
    assert not problems
    large = next(d for d in docs if d["params"]["peers"] == 5000)
    fig = large["figures"]["population.per_peer_b"]
    assert fig["value"] == pytest.approx(8 * 1024 * 1024 / 4000)  # 8 MB over 4000 more peers
    assert fig["baseline"] == pytest.approx(2 * 1024 * 1024 / 4000)
    assert fig["goal"] == "<= 2048 B"
    assert report.goal_met(fig) is False


def test_goals_are_judged_on_the_ratio_or_the_value() -> None:
    assert report.goal_met({"value": 9, "ratio": 0.5, "goal": "<= 1.0x"}) is True
    assert report.goal_met({"value": 9, "ratio": 1.2, "goal": "<= 1.0x"}) is False
    assert report.goal_met({"value": 61, "goal": "< 60 MB"}) is False
    assert report.goal_met({"value": 40, "goal": "< 50 ms"}) is True
    assert report.goal_met({"value": 40, "goal": "< 2x"}) is None  # no baseline
    assert report.goal_met({"value": 40, "goal": "fast"}) is None


def test_datapath_flat_json_is_read_and_plotted(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "report"
    results.mkdir()
    raw = {
        "product_cross_node_gbps_median": 9.7,
        "hand_vxlan_gbps_median": 10.0,
        "underlay_gbps_median": 20.0,
        "hand_vxlan_cpu_s_per_gb_median": 0.1,
        "product_cross_node_vs_hand_vxlan_paired_ratio_median": 0.98,
        "hand_vxlan_bridge_ct_gbps_median": 9.6,
        "product_cross_node_vs_hand_vxlan_bridge_ct_cpu_ratio": 1.01,
        "bridge_cpu_ratio": 0.99,
        "seconds_per_run": 3,
        "rounds": 5,
        "loadavg_1m_before": 1.0,
    }
    (results / "datapath.json").write_text(json.dumps(raw))
    report.render(results, out)
    assert (out / "throughput.png").exists()
    text = (out / "summary.md").read_text()
    assert "| datapath.product_cross_node | 9.70 | Gbit/s | 10.0 (hand-built vxlan) | 0.97x" in text
    assert "| >= 0.97x | met |" in text
    # the hand-built pair with the product's topology (bridge, conntrack) and the ratios to it
    bridged = "| datapath.hand_vxlan_bridge_ct | 9.60 | Gbit/s | 10.0 (hand-built vxlan) | 0.96x"
    assert bridged in text
    assert "| datapath.product_vs_hand_bridge_ct.cpu_ratio | 1.01 | x |" in text
    assert "| datapath.bridge_cpu_ratio | 0.99 | x |" in text


def test_ipv6_datapath_and_dual_stack_convergence_are_reported_beside_ipv4(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "report"
    results.mkdir()
    common = {"hand_vxlan_gbps_median": 10.0, "seconds_per_run": 3, "rounds": 5}
    (results / "datapath.json").write_text(
        json.dumps({**common, "product_cross_node_gbps_median": 9.8})
    )
    v6 = {
        **common,
        "family": 6,
        "mtu": 1430,
        "product_cross_node_gbps_median": 9.0,
        "underlay_gbps_median": 20.0,
        "notrack_paired_ratio_median": 1.05,
        "ethtool": ["flannel-v6.1 vs hv.42: identical"],
        "loadavg_1m_before": 11.0,
    }
    (results / "datapath-6.json").write_text(json.dumps(v6))
    conv = benchjson.Results("convergence", str(results / "convergence-dual-100.json"),
                             peers=100, dual_stack=1)  # fmt: skip
    conv.figure("convergence.dual_stack.add.p99", 90.0, "ms", 5.0, "etcd watch", "< 200 ms")
    conv.samples("convergence.dual_stack.add", [40.0, 90.0], "ms")
    conv.write()
    report.render(results, out)
    text = (out / "summary.md").read_text()
    # Both families' goals, each judged on its own run's hand-built baseline.
    assert "| datapath.product_cross_node | 9.80 | Gbit/s | 10.0 (hand-built vxlan) | 0.98x" in text
    assert (
        "| datapath.ipv6.product_cross_node | 9.00 | Gbit/s | 10.0 (hand-built vxlan) | 0.90x"
        in (text)
    )
    assert "| datapath.ipv6.product_cross_node | 9.00 Gbit/s | 0.90x | >= 0.97x | **missed** |" in (
        text
    )
    assert "| datapath.ipv6.notrack_paired_ratio_median | 1.05 | x |" in text
    assert "datapath (family=6, mtu=1430, rounds=5, seconds=3)" in text
    assert "- ethtool -k flannel-v6.1 vs hv.42: identical" in text
    assert "| convergence.dual_stack.add.p99 | 90.0 ms | 18.00x | < 200 ms | met |" in text
    assert (out / "throughput.png").exists() and (out / "convergence-cdf.png").exists()
