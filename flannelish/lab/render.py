"""Human output of the lab commands: step lines, tables. rich only, no logic."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flannelish.lab import procs
from flannelish.lab.analysis import FAIL, PASS, Analysis
from flannelish.lab.check import CheckReport
from flannelish.lab.state import LabState
from flannelish.testing.netns import list_netns

OK = "[green]✓[/green]"
BAD = "[red]✗[/red]"


@dataclass
class _Step:
    detail: str = ""


class StepReporter:
    """One line per step: a spinner while it runs (on a terminal), then ✓/✗ and the time."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[_Step]:
        step = _Step()
        started = time.monotonic()
        try:
            with self.console.status(f"{title} ..."):
                yield step
        except BaseException:
            self.console.print(f"{BAD} {title}  [dim]({time.monotonic() - started:.2f}s)[/dim]")
            raise
        detail = f"  [dim]{escape(step.detail)}[/dim]" if step.detail else ""
        self.console.print(f"{OK} {title}{detail}  [dim]({time.monotonic() - started:.2f}s)[/dim]")


def lab_table(state: LabState) -> Table:
    vxlan = state.spec.backend == "vxlan"
    title = f"backend {state.spec.backend}"
    if vxlan:
        title += f" (VNI {state.spec.vni}, udp/{state.spec.port})"
    networks = {4: state.spec.network, 6: state.spec.network6}
    pod_nets = " + ".join(networks[f] for f in state.spec.families)
    title += f", pod network {pod_nets}, etcd {escape(state.etcd_endpoint)}"
    table = Table(title=title, title_justify="left")
    for column in ("node", "public IP", "subnet", "MTU", "VTEP MAC" if vxlan else "", "pods"):
        if column:
            table.add_column(column, no_wrap=True)
    for node in state.nodes:
        pods = "\n".join(f"{p.name} {_addrs(p.ip, p.ip6)}" for p in state.pods_of(node.name))
        subnets = _addrs(node.subnet, node.subnet6)
        row = [node.name, _addrs(node.ip, node.ip6), subnets, str(node.mtu or "-")]
        pods = pods or "-"
        if vxlan:
            row.append(node.vtep_mac or "-")
        table.add_row(*row, pods)
    return table


def health(state: LabState) -> list[tuple[str, bool, str]]:
    """(component, healthy, detail) for `lab status`."""
    existing = set(list_netns())
    rows = [
        (
            "underlay",
            state.underlay_netns in existing,
            f"{state.underlay_netns}",
        )
    ]
    if state.etcd is not None:
        rows.append(
            ("etcd", procs.is_ours(state.etcd), f"pid {state.etcd.pid}, {state.etcd_endpoint}")
        )
    for node in state.nodes:
        alive = node.daemon is not None and procs.is_ours(node.daemon)
        pid = node.daemon.pid if node.daemon else "-"
        rows.append(
            (node.name, alive and node.netns in existing, f"{node.netns}, daemon pid {pid}")
        )
    for pod in state.pods:
        rows.append((pod.name, pod.netns in existing, f"{pod.netns}, {pod.ip or 'no IP'}"))
    return rows


def status_table(state: LabState) -> Table:
    table = Table(
        title=f"lab {state.spec.name}: {state.phase}  ({state.dir})", title_justify="left"
    )
    table.add_column("component")
    table.add_column("state")
    table.add_column("detail")
    for name, ok, detail in health(state):
        table.add_row(name, "[green]running[/green]" if ok else "[red]down[/red]", detail)
    return table


def _ms(value: float | None) -> str:
    return f"{value:.3f} ms" if value is not None else "-"


def family_counts(report: CheckReport, family: int) -> str:
    """'IPv6 12/12 pings, 6/6 probes': one family's share of a check."""
    pings = [p for p in report.pings if p.family == family]
    nat = [n for n in report.nat if n.family == family]
    good_pings = sum(1 for p in pings if p.ok)
    good_nat = sum(1 for n in nat if n.ok)
    return f"IPv{family} {good_pings}/{len(pings)} pings, {good_nat}/{len(nat)} probes"


def check_tables(report: CheckReport) -> list[Table]:
    pings = Table(title="pod-to-pod ping", title_justify="left")
    for column in ("from", "to", "path", "loss", "avg RTT", ""):
        pings.add_column(column, no_wrap=True)
    for p in report.pings:
        path = "same node" if p.same_node else "cross-node"
        pings.add_row(
            f"{p.src} {p.src_ip}",
            f"{p.dst} {p.dst_ip}",
            path,
            f"{p.loss_pct:.0f}% ({p.received}/{p.sent})",
            _ms(p.rtt_avg_ms),
            OK if p.ok else f"{BAD} {escape(p.error)}",
        )
    nat = Table(
        title="no-NAT probe: the server reports the source address it sees", title_justify="left"
    )
    for column in ("client", "server", "proto", "client IP", "server saw", ""):
        nat.add_column(column, no_wrap=True)
    for n in report.nat:
        nat.add_row(
            n.client,
            f"{n.server} {n.server_ip}",
            n.proto,
            n.client_ip,
            n.seen or "-",
            OK if n.ok else f"{BAD} {escape(n.error or 'source address was rewritten')}",
        )
    return [pings, nat]


def verify_table(analysis: Analysis) -> Table:
    table = Table(title="what crossed the underlay", title_justify="left")
    table.add_column("assertion", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail")
    marks = {PASS: f"{OK} pass", FAIL: f"{BAD} FAIL"}
    for v in analysis.verdicts:
        table.add_row(v.name, marks.get(v.status, "[yellow]skip[/yellow]"), escape(v.detail))
    return table


def _addrs(primary: str, ip6: str) -> str:
    """One address, or both of a dual-stack node or pod ('-' for none)."""
    return "\n".join(dict.fromkeys(a for a in (primary, ip6) if a)) or "-"
