"""Render bench/report/: a Markdown summary of every figure and PNG plots.

Reads every results document (bench/benchjson.py's format) in the results
directory -- whatever exists: a missing bench is skipped with one line saying
so -- and writes into the output directory:

  summary.md              every figure with its baseline and ratio, per bench,
                          the machine's load average during each run, the notes
  cni-latency.png         CNI ADD/DEL latency CDFs at 1 and 8 concurrent calls,
                          flannelish (daemon fast path) vs the reference plugins
  convergence-cdf.png     lease put/delete -> route in the kernel, vs etcd watch
  peers.png               per-event convergence p50/p99 and daemon RSS vs peers
  cold-sync.png           cold sync time vs peers, iproute2 -batch and flanneld
  throughput.png          iperf3 Gbit/s per case and IP family vs hand-built
  fleet.png               fleet simulator: watch fan-out CDFs vs one watcher alone,
                          lease-storm acquire times (bench/fleet.py)

    .venv/bin/python bench/report.py [--results bench/report/results] [--out bench/report]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchjson import load, pct

HERE = Path(__file__).resolve().parent
CNI_VARIANTS = ("reference", "daemon")
Doc = dict[str, Any]


def from_population(raw: dict[str, Any]) -> Doc:
    """bench/convergence.py --population's own JSON as a results document."""
    n, daemons = raw["peers"], raw["daemons"]
    load_avg = raw.get("load", [0.0, 0.0])
    doc: Doc = {
        "format": "flannelish-bench/1",
        "bench": "population",
        "params": {"peers": n, "events": raw.get("events")},
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_start": [load_avg[0]],
            "loadavg_end": [load_avg[1]],
        },
        "figures": {},
        "samples": {},
        "sample_units": {},
        "notes": ["from bench/convergence.py --population (its own JSON, adapted by report.py)"],
    }
    figs = doc["figures"]
    flannel_base = raw["iproute2_s"]  # Flannel's 3N entries (what flanneld writes)
    base = raw.get("iproute2_nexthops_s", flannel_base)  # the entries flannelish writes

    def fig(
        name: str, value: float, unit: str, baseline: float | None = None, /, **kw: str
    ) -> None:
        figs[name] = {"value": value, "unit": unit}
        if baseline is not None:
            figs[name].update(baseline=baseline, ratio=value / baseline if baseline else 0.0)
        figs[name].update(kw)

    fig("population.iproute2_s", flannel_base, "s")
    if "iproute2_nexthops_s" in raw:
        fig("population.iproute2_nexthops_s", base, "s")
    flanneld = raw["add"].get("flanneld")
    for who, d in daemons.items():
        pre = "population" if who == "flannelish" else f"population.{who}"
        # The cold-sync goal is set at 5000 peers; below, a daemon's fixed start
        # (the interpreter, ~0.3 s) outweighs a baseline of tens of ms.
        goal = {"goal": "<= 2.0x"} if who == "flannelish" and n >= 5000 else {}
        fig(f"{pre}.cold.env_s", d["env_s"], "s")
        own = who == "flannelish"
        fig(
            f"{pre}.cold.routes_s",
            d["routes_s"],
            "s",
            base if own else flannel_base,
            baseline_name="iproute2 -batch, the same entries",
            **goal,
        )
        if own and base != flannel_base:
            fig(f"{pre}.cold.routes_vs_flannel_entries", d["routes_s"], "s", flannel_base,
                baseline_name="iproute2 -batch, Flannel's entries")  # fmt: skip
        fig(f"{pre}.cold.sync_s", d["routes_s"] - d["env_s"], "s")
        hwm_goal = {"goal": "< 60 MB"} if who == "flannelish" and n >= 5000 else {}
        fig(f"{pre}.hwm_mb", d["VmHWM"] / 1024, "MB", **hwm_goal)
        if "VmRSS" in d:  # at the end, after the idle period
            fig(f"{pre}.rss_mb", d["VmRSS"] / 1024, "MB")
        if "idle_cpu_pct" in d:
            fig(f"{pre}.idle_cpu_pct", d["idle_cpu_pct"], "% of a CPU")
        for kind in ("add", "delete"):
            values = raw[kind].get(who) or []
            if not values:
                continue
            doc["samples"][f"population.{kind}.{who}"] = values
            doc["sample_units"][f"population.{kind}.{who}"] = "ms"
            other = raw[kind].get("flanneld") if who == "flannelish" else None
            for q in (50, 99):
                extra: dict[str, str] = {"baseline_name": "flanneld"} if other else {}
                if other and kind == "add":
                    extra["goal"] = "<= 1.0x"
                fig(f"{pre}.{kind}.p{q}", pct(values, q), "ms",
                    pct(other, q) if other else None, **extra)  # fmt: skip
    if raw.get("watch"):
        doc["samples"]["population.watch"] = raw["watch"]
        doc["sample_units"]["population.watch"] = "ms"
    if not flanneld:
        doc["notes"].append("flanneld not measured (FLANNELD_BIN not set)")
    return doc


def from_datapath(raw: dict[str, Any]) -> Doc:
    """bench/datapath.py --json's own flat JSON as a results document.

    ``--family 6`` runs' figures are named ``datapath.ipv6.*`` (both runs have
    the same cases); their ethtool findings become notes."""
    family = int(raw.get("family", 4))
    pre = "datapath" if family == 4 else "datapath.ipv6"
    params = {"seconds": raw.get("seconds_per_run"), "rounds": raw.get("rounds")}
    if family != 4:
        params.update(family=family, mtu=raw.get("mtu"))
    doc: Doc = {
        "format": "flannelish-bench/1",
        "bench": "datapath",
        "params": params,
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_start": [raw.get("loadavg_1m_before", 0.0)],
            "loadavg_end": [raw.get("loadavg_1m_after", 0.0)],
        },
        "figures": {},
        "samples": {},
        "sample_units": {},
        "notes": ["from bench/datapath.py --json (its own flat JSON, adapted by report.py)"],
    }
    doc["notes"] += [f"ethtool -k {line}" for line in raw.get("ethtool", [])]
    base = raw.get("hand_vxlan_gbps_median")
    for key, value in sorted(raw.items()):
        if key.endswith("_gbps_median"):
            name = key.removesuffix("_gbps_median")
            fig: dict[str, Any] = {"value": value, "unit": "Gbit/s"}
            if base:
                fig.update(baseline=base, baseline_name="hand-built vxlan", ratio=value / base)
            if name == "product_cross_node":
                fig["goal"] = ">= 0.97x"
            doc["figures"][f"{pre}.{name}"] = fig
        elif key.endswith("_cpu_s_per_gb_median"):
            name = key.removesuffix("_cpu_s_per_gb_median")
            doc["figures"][f"{pre}.cpu.{name}"] = {"value": value, "unit": "CPU-s/GB"}
    for key in ("paired_ratio_median", "cpu_ratio"):
        full = f"product_cross_node_vs_hand_vxlan_{key}"
        if full in raw:
            doc["figures"][f"{pre}.product_vs_hand.{key}"] = {"value": raw[full], "unit": "x"}
    # the same table / conntrack only / pods on a bridge with conntrack, on a hand-built pair
    for against in ("nft", "ct", "bridge_ct"):
        for key in ("paired_ratio_median", "cpu_ratio"):
            full = f"product_cross_node_vs_hand_vxlan_{against}_{key}"
            if full in raw:
                name = f"{pre}.product_vs_hand_{against}.{key}"
                doc["figures"][name] = {"value": raw[full], "unit": "x"}
    # The tunnel's notrack: hand-built + the product's table, with vs without it;
    # and what conntrack alone costs the hand-built pair per byte.
    notes = ("notrack_paired_ratio_median", "notrack_cpu_ratio", "conntrack_cpu_ratio",
             "bridge_cpu_ratio")  # fmt: skip
    for key in notes:
        if key in raw:
            doc["figures"][f"{pre}.{key}"] = {"value": raw[key], "unit": "x"}
    return doc


def load_all(results: Path) -> tuple[list[Doc], list[str]]:
    docs, problems = [], []
    for path in sorted(results.glob("*.json")):
        try:
            raw = json.loads(path.read_text())
            if isinstance(raw, dict) and "daemons" in raw and "format" not in raw:
                doc = from_population(raw)
            elif isinstance(raw, dict) and "hand_vxlan_gbps_median" in raw:
                doc = from_datapath(raw)
            else:
                doc = load(path)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            problems.append(f"{path.name}: skipped ({exc})")
            continue
        doc["_file"] = path.name
        docs.append(doc)
    add_per_peer_memory(docs)
    return docs, problems


def add_per_peer_memory(docs: list[Doc]) -> None:
    """Memory per peer: the RSS slope between the smallest and largest population run.

    Each daemon's RSS after its idle period (every first pass done, the start-up
    peak returned), so what a peer costs with its lease, peer table entries,
    kernel records and nft element, and none of the fixed cost of a daemon.
    """
    runs = sorted(
        (d for d in docs if d["bench"] == "population"), key=lambda d: d["params"]["peers"]
    )
    if len(runs) < 2 or runs[0]["params"]["peers"] == runs[-1]["params"]["peers"]:
        return
    small, large = runs[0], runs[-1]
    extra = large["params"]["peers"] - small["params"]["peers"]
    slopes: dict[str, float] = {}
    for pre in ("population", "population.flanneld"):
        a, b = small["figures"].get(f"{pre}.rss_mb"), large["figures"].get(f"{pre}.rss_mb")
        if a and b:
            slopes[pre] = (b["value"] - a["value"]) * 1024 * 1024 / extra
    if "population" not in slopes:
        return
    fig = large["figures"]["population.per_peer_b"] = {
        "value": slopes["population"],
        "unit": "B",
        "goal": "<= 2048 B",
    }
    if "population.flanneld" in slopes:
        fd = slopes["population.flanneld"]
        fig.update(baseline=fd, baseline_name="flanneld", ratio=slopes["population"] / fd)
        large["figures"]["population.flanneld.per_peer_b"] = {"value": fd, "unit": "B"}
    large["notes"].append(
        f"per_peer_b: RSS after idle, {large['params']['peers']} vs "
        f"{small['params']['peers']} peers, difference per added peer"
    )


def cdf(values: list[float]) -> tuple[list[float], list[float]]:
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _peers(doc: Doc) -> int | None:
    peers = doc["params"].get("peers") or doc["params"].get("population")
    return int(peers) if peers else None


def _title(doc: Doc) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(doc["params"].items()))
    return f"{doc['bench']}" + (f" ({params})" if params else "")


# -- Markdown ------------------------------------------------------------------


def goal_met(fig: dict[str, Any]) -> bool | None:
    """A goal "<= 1.0x" / "< 2x" is on the ratio, "< 60 MB" / "<= 50 ms" on the value."""
    parts = str(fig.get("goal", "")).split()
    if not parts or parts[0] not in ("<", "<=", ">", ">="):
        return None
    op, rest = parts[0], "".join(parts[1:])
    try:
        if rest.endswith("x"):
            if "ratio" not in fig:
                return None
            have, want = fig["ratio"], float(rest[:-1])
        else:
            have, want = fig["value"], float(rest.rstrip("abcdefghijklmnopqrstuvwxyzMGB/%"))
    except ValueError:
        return None
    return {"<": have < want, "<=": have <= want, ">": have > want, ">=": have >= want}[op]


def markdown(docs: list[Doc], problems: list[str], plots: list[tuple[str, str]]) -> str:
    lines = ["# flannelish benchmark report", ""]
    lines.append(
        "Every figure of the last `make bench` run, next to the baseline measured in the "
        "same run (ratio = value / baseline). Latencies in ms unless the unit says otherwise. "
        "Regenerate: `make bench` (all, < 15 min) or `make bench-quick`; render only: "
        "`.venv/bin/python bench/report.py`."
    )
    lines.append("")
    for line in problems:
        lines.append(f"- {line}")
    if problems:
        lines.append("")
    goals = [(d, n, f) for d in docs for n, f in sorted(d["figures"].items()) if f.get("goal")]
    if goals:
        lines.append("## Goals")
        lines.append("")
        lines.append("| bench | figure | value | ratio | goal | |")
        lines.append("|---|---|---:|---:|---|---|")
        for d, n, f in goals:
            ok = goal_met(f)
            mark = "" if ok is None else ("met" if ok else "**missed**")
            ratio = f"{f['ratio']:.2f}x" if "ratio" in f else ""
            lines.append(
                f"| {_title(d)} | {n} | {_fmt(f['value'])} {f['unit']} | {ratio} "
                f"| {f['goal']} | {mark} |"
            )
        lines.append("")
    if plots:
        lines.append("## Plots")
        lines.append("")
        for name, caption in plots:
            lines.append(f"![{caption}]({name})")
            lines.append("")
    for doc in docs:
        host = doc["host"]
        la0, la1 = host.get("loadavg_start") or [0.0], host.get("loadavg_end") or [0.0]
        lines.append(f"## {_title(doc)}")
        lines.append("")
        known = [  # a bench's own JSON (datapath, population) records less than benchjson's
            host.get("started"),
            f"{host['seconds']} s" if "seconds" in host else None,
            f"{host['cpus']} CPUs" if "cpus" in host else None,
            f"kernel {host['kernel']}" if "kernel" in host else None,
            f"load average {la0[0]:.1f} at start, {la1[0]:.1f} at end",
        ]
        lines.append(f"`{doc['_file']}`: " + ", ".join(str(x) for x in known if x))
        lines.append("")
        figures = doc["figures"]
        if figures:
            lines.append("| figure | value | unit | baseline | ratio | goal |")
            lines.append("|---|---:|---|---:|---:|---|")
            for name in sorted(figures):
                f = figures[name]
                base = _fmt(f.get("baseline"))
                if base and f.get("baseline_name"):
                    base += f" ({f['baseline_name']})"
                ratio = f"{f['ratio']:.2f}x" if "ratio" in f else ""
                lines.append(
                    f"| {name} | {_fmt(f['value'])} | {f['unit']} | {base} | {ratio} "
                    f"| {f.get('goal', '')} |"
                )
            lines.append("")
        for note in doc["notes"]:
            lines.append(f"- {note}")
        if doc["notes"]:
            lines.append("")
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 9, "figure.dpi": 110})
    return plt


def _by_bench(docs: Iterable[Doc], bench: str) -> list[Doc]:
    return [d for d in docs if d["bench"] == bench]


def plot_cni(docs: list[Doc], out: Path) -> str | None:
    cni = _by_bench(docs, "cni")
    if not cni:
        return None
    doc = cni[-1]
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharey=True)
    for row, op in enumerate(("ADD", "DEL")):
        for col, conc in enumerate((1, 8)):
            ax = axes[row][col]
            for variant, style in zip(CNI_VARIANTS, ("-", "-"), strict=True):
                values = doc["samples"].get(f"cni.{op}.c{conc}.{variant}")
                if not values:
                    continue
                label = "reference (bridge + host-local)" if variant == "reference" else variant
                if variant == "daemon":
                    label = "flannelish (native launcher -> daemon)"
                xs, ys = cdf(values)
                ax.step(xs, ys, style, where="post", label=label)
            ax.set_title(f"{op}, {conc} concurrent call{'s' if conc > 1 else ''}")
            ax.set_xlabel("latency (ms)")
            ax.grid(alpha=0.3)
            ax.set_ylim(0, 1.01)
            if col == 0:
                ax.set_ylabel("fraction of calls")
    axes[0][0].legend(loc="lower right", fontsize=8)
    la = doc["host"].get("loadavg_start", [0.0])[0]
    fig.suptitle(f"CNI latency CDF, same run, interleaved (load average {la:.1f})")
    fig.tight_layout()
    fig.savefig(out / "cni-latency.png")
    plt.close(fig)
    return "cni-latency.png"


def plot_convergence_cdf(docs: list[Doc], out: Path) -> str | None:
    conv = [d for d in docs if d["bench"] in ("convergence", "population") and d["samples"]]
    if not conv:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for doc in sorted(conv, key=lambda d: _peers(d) or 0):
        peers = _peers(doc)
        for key, values in sorted(doc["samples"].items()):
            if not values or doc["sample_units"].get(key, "ms") != "ms":
                continue
            xs, ys = cdf(values)
            if ".delete" in key or (doc["bench"] == "population" and key.endswith("watch")):
                continue  # adds only: one curve per daemon and population stays readable
            name = key.removeprefix("convergence.").removeprefix("population.")
            ax.step(xs, ys, where="post", label=f"{name}" + (f", {peers} peers" if peers else ""))
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of events")
    ax.set_title("etcd lease event -> route in the kernel (watch = etcd put -> watch event)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "convergence-cdf.png")
    plt.close(fig)
    return "convergence-cdf.png"


def _series(docs: list[Doc], bench: str, name: str) -> tuple[list[int], list[float]]:
    """(peers, value) of figure `name` across the documents of `bench`.

    Either may list alternatives with "|"; at one number of peers a later
    alternative name wins (population's figures over scale.py's at 1000 peers).
    """
    points: dict[int, float] = {}
    for n in name.split("|"):
        for d in docs:
            peers = _peers(d)
            if d["bench"] in bench.split("|") and peers and n in d["figures"]:
                points[peers] = d["figures"][n]["value"]
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def plot_peers(docs: list[Doc], out: Path) -> str | None:
    panels = [
        (
            "convergence|population",
            "per-event convergence: lease put -> route (ms)",
            [
                ("convergence.add.p50|population.add.p50", "flannelish p50"),
                ("convergence.add.p99|population.add.p99", "flannelish p99"),
                ("population.flanneld.add.p50", "flanneld p50"),
                ("population.flanneld.add.p99", "flanneld p99"),
            ],
        ),
        (
            "scale|population",
            "daemon peak RSS, VmHWM (MB)",
            [
                ("scale.hwm_mb|population.hwm_mb", "flannelish"),
                ("population.flanneld.hwm_mb", "flanneld"),
            ],
        ),
    ]
    found = [(b, t, [(n, lbl, *_series(docs, b, n)) for n, lbl in s]) for b, t, s in panels]
    found = [(b, t, [s for s in series if s[2]]) for b, t, series in found]
    found = [p for p in found if p[2]]
    if not found:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(found), figsize=(5 * len(found), 4), squeeze=False)
    for ax, (_bench, title, series) in zip(axes[0], found, strict=True):
        for _name, label, xs, ys in series:
            ax.plot(xs, ys, "o-", label=label)
        ax.set_xscale("log")
        if "ms" in title:
            ax.set_yscale("log")
        ax.set_xlabel("peers")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "peers.png")
    plt.close(fig)
    return "peers.png"


def plot_cold_sync(docs: list[Doc], out: Path) -> str | None:
    series = [
        ("scale.sync_s|population.cold.sync_s", "flannelish: subnet.env -> all routes"),
        ("population.cold.routes_s", "flannelish: start -> all routes"),
        ("scale.baseline_s|population.iproute2_nexthops_s", "iproute2 -batch, same entries"),
        ("population.iproute2_s", "iproute2 -batch, Flannel's entries"),
        ("population.flanneld.cold.routes_s", "flanneld: start -> all routes"),
    ]
    data = [(label, *_series(docs, "scale|population", name)) for name, label in series]
    data = [d for d in data if d[1]]
    if not data:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    peers = sorted({p for _, xs, _ in data for p in xs})
    width = 0.8 / len(data)
    for i, (label, xs, ys) in enumerate(data):
        pos = [peers.index(x) + (i - (len(data) - 1) / 2) * width for x in xs]
        ax.bar(pos, ys, width, label=label)
    ax.set_xticks(range(len(peers)), [str(p) for p in peers])
    ax.set_xlabel("peers (leases in etcd at start)")
    ax.set_ylabel("seconds")
    ax.set_title("cold sync of one daemon")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cold-sync.png")
    plt.close(fig)
    return "cold-sync.png"


def plot_throughput(docs: list[Doc], out: Path) -> str | None:
    bars = []
    for doc in _by_bench(docs, "datapath"):
        for name, f in sorted(doc["figures"].items()):
            if f["unit"] == "Gbit/s":
                bars.append((name.removeprefix("datapath."), f["value"]))
    if not bars:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(bars) + 1.5))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color="tab:blue")
    for i, (_, v) in enumerate(bars):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("Gbit/s (iperf3 TCP, median)")
    ax.set_title("pod-to-pod throughput vs hand-built and underlay")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out / "throughput.png")
    plt.close(fig)
    return "throughput.png"


def plot_fleet(docs: list[Doc], out: Path) -> str | None:
    fleet = [d for d in _by_bench(docs, "fleet") if d["samples"]]
    if not fleet:
        return None
    doc = fleet[-1]
    samples, figs = doc["samples"], doc["figures"]
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    curves = [
        ("fleet.fanout.all_seen", "seen by all watchers"),
        ("fleet.fanout.product", "seen by watch_leases (under fan-out)"),
        ("fleet.fanout.product.baseline", "one watcher, no fan-out"),
    ]
    for key, label in curves:
        if samples.get(key):
            xs, ys = cdf(samples[key])
            left.step(xs, ys, where="post", label=label)
    left.axvline(100, color="grey", linestyle=":", label="goal: p99 < 100 ms")
    left.set_xscale("log")
    left.set_xlabel("lease put -> watch event (ms, log)")
    left.set_ylabel("fraction of writes / deliveries")
    left.set_title(f"watch fan-out, {doc['params'].get('watchers', '?')} watchers on one etcd")
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=7)
    if samples.get("fleet.storm.acquire"):
        xs, ys = cdf(samples["fleet.storm.acquire"])
        right.step(xs, ys, where="post", label="acquire (list, pick, create-only txn)")
    nodes = doc["params"].get("nodes", "?")
    retries = figs.get("fleet.storm.retries_total", {}).get("value", 0)
    failed = figs.get("fleet.storm.failed", {}).get("value", 0)
    right.set_title(
        f"lease storm: {nodes} nodes at once\n{retries:.0f} lost races, {failed:.0f} gave up"
    )
    right.set_xlabel("seconds from the start of the storm")
    right.set_ylabel("fraction of nodes with a subnet")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fleet.png")
    plt.close(fig)
    return "fleet.png"


PLOTS = [
    (plot_cni, "CNI ADD/DEL latency CDFs vs the reference plugins", "cni"),
    (plot_convergence_cdf, "convergence latency CDF", "convergence"),
    (plot_peers, "per-event convergence and RSS vs peers", "convergence or scale or population"),
    (plot_cold_sync, "cold-sync time vs iproute2 and flanneld", "scale or population"),
    (plot_throughput, "throughput vs hand-built and underlay", "datapath"),
    (plot_fleet, "fleet simulator: watch fan-out and lease storm", "fleet"),
]


def render(results: Path, out: Path) -> list[str]:
    """Write summary.md and the plots; returns one line per thing skipped."""
    out.mkdir(parents=True, exist_ok=True)
    docs, problems = load_all(results) if results.is_dir() else ([], [])
    if not docs:
        problems.append(f"no results in {results}: run `make bench` (or `make bench-quick`)")
    present = {d["bench"] for d in docs}
    for bench in ("cni", "convergence", "scale", "population", "leases", "datapath", "fleet"):
        if bench not in present:
            problems.append(f"{bench}: no results, skipped")
    plots = []
    for plot, caption, needs in PLOTS:
        name = plot(docs, out)
        if name:
            plots.append((name, caption))
        elif any(b in present for b in needs.split(" or ")):
            problems.append(f"{caption}: no data for this plot in the {needs} results")
    (out / "summary.md").write_text(markdown(docs, problems, plots) + "\n")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "report" / "results"))
    parser.add_argument("--out", default=str(HERE / "report"))
    args = parser.parse_args()
    for line in render(Path(args.results), Path(args.out)):
        print(line)
    print(f"wrote {os.path.join(args.out, 'summary.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
