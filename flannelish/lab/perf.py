"""`flannelish lab perf`: pod-to-pod TCP throughput, next to the underlay's.

Three measurements, each one iperf3 TCP stream for `seconds`, interleaved
over `rounds` (so a burst of load on a shared machine hits all of them):

* same node: pod1 -> pod2 of the first node (veth -> cni0 -> veth);
* cross node: the first node's pod1 -> the second node's pod1, through the
  lab's backend (VXLAN: flannel.1 over eth0; host-gw: routed over eth0),
  with the daemon's nft table in place (masquerade, anti-spoof);
* underlay: node1 -> node2 over eth0 (MTU 1500, no encapsulation, no pods).

The figure is the receiver's rate (iperf3's ``sum_received``) in Gbit/s,
the median over rounds, with min..max.  The lab keeps the nodes' offloads
on (only `verify` turns segmentation off while it captures), so these are
the rates a node gets.  Other backends: `lab down`, `lab up --backend host-gw`.
In a dual-stack lab, ``family`` picks IPv4 or IPv6 addresses for all three
paths (IPv6: pods over flannel-v6.N, the underlay over fd18::/64).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field

from flannelish.errors import FlannelishError
from flannelish.lab.state import LabState
from flannelish.testing.proc import in_netns, stop_pid

IPERF = "iperf3"
PORT = 5301


@dataclass(frozen=True)
class Path:
    kind: str  # "same node" | "cross node" | "underlay"
    client: str  # a name for the table
    server: str
    client_netns: str
    server_netns: str
    server_ip: str


@dataclass
class PerfResult:
    path: Path
    gbps: list[float] = field(default_factory=list)
    retransmits: list[int] = field(default_factory=list)
    error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.gbps) if self.gbps else None


@dataclass
class PerfReport:
    backend: str
    seconds: int
    rounds: int
    results: list[PerfResult]
    load: tuple[float, float]  # 1-minute load average before, after
    family: int = 4

    def ratio(self, kind: str, base: str = "underlay") -> float | None:
        by = {r.path.kind: r.median for r in self.results}
        top, bottom = by.get(kind), by.get(base)
        return top / bottom if top is not None and bottom else None


def parse_iperf(text: str) -> tuple[float, int]:
    """`iperf3 -J` client output -> (Gbit/s received by the server, retransmits).

    iperf3 exits 0 with {"error": ...} when it could not connect, hence the checks.
    """
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        raise FlannelishError("iperf3 printed no JSON", text[-200:]) from None
    if not isinstance(doc, dict):
        raise FlannelishError("iperf3 printed unexpected JSON", text[-200:])
    if doc.get("error"):
        raise FlannelishError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    received = end.get("sum_received") or {}
    if "bits_per_second" not in received:
        raise FlannelishError("iperf3 reported no received rate", text[-200:])
    retrans = int((end.get("sum_sent") or {}).get("retransmits", 0) or 0)
    return float(received["bits_per_second"]) / 1e9, retrans


def default_family(state: LabState) -> int:
    """IPv4 unless the lab is IPv6-only."""
    return state.spec.families[0]


def perf_families(
    state: LabState, seconds: int = 2, rounds: int = 3, family: int | None = None
) -> list[PerfReport]:
    """`family`'s report, or one per family the lab carries (a dual-stack lab: both)."""
    families = [family] if family else list(state.spec.families)
    return [perf(state, seconds, rounds, f) for f in families]


def paths(state: LabState, family: int = 4) -> list[Path]:
    """The three paths, between addresses of IP version `family`."""
    nodes = state.nodes
    out: list[Path] = []
    if nodes:
        pods = [p for p in state.pods_of(nodes[0].name) if p.addr(family)]
        if len(pods) >= 2:
            a, b = pods[0], pods[1]
            out.append(Path("same node", a.name, b.name, a.netns, b.netns, b.addr(family)))
    if len(nodes) >= 2:
        first = [p for p in state.pods_of(nodes[0].name) if p.addr(family)]
        second = [p for p in state.pods_of(nodes[1].name) if p.addr(family)]
        if first and second:
            a, b = first[0], second[0]
            out.append(Path("cross node", a.name, b.name, a.netns, b.netns, b.addr(family)))
        n1, n2 = nodes[0], nodes[1]
        if n2.addr(family):
            out.append(Path("underlay", n1.name, n2.name, n1.netns, n2.netns, n2.addr(family)))
    return out


def run_iperf(path: Path, seconds: int) -> tuple[float, int]:
    """One iperf3 run: a one-shot server in the destination (stopped by its PID), one client."""
    server = subprocess.Popen(
        in_netns(path.server_netns, [IPERF, "-s", "-1", "-B", path.server_ip, "-p", str(PORT)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        text = ""
        for _ in range(50):  # until the server listens
            result = subprocess.run(
                in_netns(path.client_netns, [IPERF, "-J", "-c", path.server_ip, "-p", str(PORT),
                                             "-t", str(seconds)]),
                capture_output=True, text=True, timeout=seconds + 30, check=False,
            )  # fmt: skip
            text = result.stdout
            if result.returncode == 0 and '"error"' not in text:
                break
            time.sleep(0.1)
        return parse_iperf(text)
    finally:
        stop_pid(server.pid, proc=server)


def perf(
    state: LabState, seconds: int = 2, rounds: int = 3, family: int | None = None
) -> PerfReport:
    family = family or default_family(state)
    if family not in state.spec.families:
        raise FlannelishError(
            f"lab {state.spec.name!r} carries no IPv{family}",
            f"it was built with --ip-family {state.spec.ip_family}",
        )
    before = os.getloadavg()[0]
    results = [PerfResult(p) for p in paths(state, family)]
    for _ in range(rounds):
        for res in results:
            if res.error:
                continue
            try:
                gbps, retrans = run_iperf(res.path, seconds)
            except (FlannelishError, subprocess.TimeoutExpired) as exc:
                res.error = str(exc)
                continue
            res.gbps.append(gbps)
            res.retransmits.append(retrans)
    load = (before, os.getloadavg()[0])
    return PerfReport(state.spec.backend, seconds, rounds, results, load, family)


def as_json(report: PerfReport) -> dict[str, float | int | str]:
    """A flat dict of named figures with units (as bench/ results are written)."""
    out: dict[str, float | int | str] = {"backend": report.backend,
                                         "seconds_per_run": report.seconds,
                                         "rounds": report.rounds,
                                         "family": f"ipv{report.family}"}  # fmt: skip
    for res in report.results:
        key = res.path.kind.replace(" ", "_")
        if res.median is not None:
            out[f"{key}_gbps_median"] = round(res.median, 3)
            out[f"{key}_gbps_min"] = round(min(res.gbps), 3)
            out[f"{key}_gbps_max"] = round(max(res.gbps), 3)
    for kind in ("same node", "cross node"):
        ratio = report.ratio(kind)
        if ratio is not None:
            out[f"{kind.replace(' ', '_')}_vs_underlay_ratio"] = round(ratio, 3)
    out["loadavg_1m_before"], out["loadavg_1m_after"] = (round(v, 2) for v in report.load)
    return out


def table(report: PerfReport) -> object:
    """The report as a rich Table (one row per path)."""
    from rich.table import Table

    title = (
        f"pod-to-pod TCP throughput ({report.backend}, IPv{report.family}): iperf3, 1 stream, "
        f"{report.seconds}s x {report.rounds} rounds interleaved, receiver's rate"
    )
    out = Table(title=title, title_justify="left")
    for column in ("path", "from", "to", "median", "min..max", "x underlay", "retransmits"):
        out.add_column(column, no_wrap=True)
    for res in report.results:
        median = res.median
        ratio = report.ratio(res.path.kind) if res.path.kind != "underlay" else None
        out.add_row(
            res.path.kind,
            res.path.client,
            f"{res.path.server} {res.path.server_ip}",
            f"{median:.2f} Gbit/s" if median is not None else f"✗ {res.error}",
            f"{min(res.gbps):.2f}..{max(res.gbps):.2f}" if res.gbps else "-",
            f"{ratio:.2f}" if ratio is not None else "-",
            str(sum(res.retransmits)) if res.retransmits else "-",
        )
    return out


def summary(report: PerfReport) -> str:
    by = {r.path.kind: r.median for r in report.results}
    parts = [f"{k} {v:.2f}" for k, v in by.items() if v is not None]
    return (
        f"throughput Gbit/s: {', '.join(parts) or 'none'} "
        f"(load average {report.load[0]:.1f} -> {report.load[1]:.1f} on {os.cpu_count()} CPUs)"
    )
