"""`flannelish lab up|check|status|exec|down` and `flannelish verify`.

Thin click wrappers over flannelish.lab; heavy imports (rich, scapy) happen
inside the command bodies so `flannelish --help` stays fast.  One module for
the whole `lab` command group (a little over ~450 lines): each command is a
few lines of options around a call into flannelish.lab.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from flannelish.errors import ExitCode, FlannelishError, NotAvailableError
from flannelish.lab import names

if TYPE_CHECKING:
    from flannelish.lab.state import NodeState

_STATE_DIR_HELP = "Where labs keep their state, logs and sockets."


def _lab_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=names.DEFAULT_STATE_ROOT,
        show_default=True,
        envvar="FLANNELISH_LAB_DIR",
        help=_STATE_DIR_HELP,
    )(func)
    return click.option(
        "--name",
        "--lab",
        "name",
        default=names.DEFAULT_NAME,
        show_default=True,
        envvar="FLANNELISH_LAB",
        help="Lab name (1-12 lower-case letters/digits).",
    )(func)


def _console() -> Any:
    from rich.console import Console

    # Not a terminal (a pipe, `make`, CI): rich would assume 80 columns and
    # squash the tables; logs are read in wide windows.
    width = None if sys.stdout.isatty() else 120
    return Console(highlight=False, width=width, emoji=False)


def _load(state_dir: Path, name: str) -> Any:
    from flannelish.lab.state import load_state

    names.validate_lab_name(name)
    state = load_state(names.lab_dir(state_dir, name))
    if state is None:
        raise NotAvailableError(
            f"no lab named {name!r} in {state_dir}", "start one with `flannelish lab up`"
        )
    if state.phase != "up":
        raise NotAvailableError(
            f"lab {name!r} is {state.phase}", state.error or "run `flannelish lab down`, then `up`"
        )
    return state


@click.group("lab")
def lab() -> None:
    """The multi-host lab: underlay, etcd, one daemon per node, pods, all in namespaces.

    \b
    flannelish lab up        build it (3 nodes x 2 pods by default)
    flannelish lab check     ping every pod from every pod, check for NAT
    flannelish verify        capture on the underlay and prove what crosses it
    flannelish lab down      remove everything
    """


@lab.command("up")
@_lab_options
@click.option("--nodes", type=int, default=3, show_default=True, help="Number of nodes.")
@click.option("--pods-per-node", type=int, default=2, show_default=True)
@click.option("--backend", type=click.Choice(names.BACKENDS), default="vxlan", show_default=True)
@click.option(
    "--pods",
    "pods_spec",
    default=None,
    help="Network policy: `e2e` (namespaces x,y,z, pods a,b,c) or a pods/namespaces spec "
    "file; daemons run with --policy.",
)
@click.option(
    "--ip-family",
    type=click.Choice(names.IP_FAMILIES),
    default="ipv4",
    show_default=True,
    help="Underlay and pod network families: ipv4 (198.18.0.0/24, 10.244.0.0/16), "
    "dual (both, plus fd18::/64 and fd44::/48) or ipv6 (fd18::/64, fd44::/48 only). "
    "WireGuard carries each family on its own device: flannel-wg (udp/51820 over IPv4), "
    "flannel-wg-v6 (udp/51821 over IPv6).",
)
def lab_up(
    name: str,
    state_dir: Path,
    nodes: int,
    pods_per_node: int,
    backend: str,
    pods_spec: str | None,
    ip_family: str,
) -> None:
    """Build the lab (or report the one that is already up)."""
    from flannelish.lab import build, render
    from flannelish.lab.state import LabSpec

    spec = LabSpec(
        name=name, nodes=nodes, pods_per_node=pods_per_node, backend=backend, ip_family=ip_family
    )
    if pods_spec is not None:
        from flannelish.lab.policy import load_pods_spec

        spec.pods, spec.namespaces = load_pods_spec(pods_spec, nodes)
        spec.policy = True
    console = _console()
    started = time.monotonic()
    state, built = build.up(spec, state_dir, render.StepReporter(console))
    if not built:
        console.print(f"lab [bold]{name!r}[/bold] is already up (state in {state.dir}):")
        if state.spec != spec:
            console.print(
                f"note: it was built with --nodes {state.spec.nodes} --pods-per-node "
                f"{state.spec.pods_per_node} --backend {state.spec.backend} "
                f"--ip-family {state.spec.ip_family}; to change that, "
                f"run `flannelish lab down` first"
            )
    else:
        console.print(f"lab [bold]{name!r}[/bold] is up in {time.monotonic() - started:.1f}s")
    console.print(render.lab_table(state))
    if not built:
        unhealthy = [row[0] for row in render.health(state) if not row[1]]
        if unhealthy:
            raise FlannelishError(
                f"lab {name!r} exists but is degraded: {', '.join(unhealthy)} down",
                "run `flannelish lab down` and `flannelish lab up` again",
            )
    opt = "" if name == names.DEFAULT_NAME else f" --name {name}"
    first = state.pods[0].name if state.pods else "node1"
    console.print(
        f"next: flannelish lab check{opt} | flannelish verify{opt} | "
        f"flannelish lab exec{opt} {first} -- ip addr | flannelish lab down{opt}"
    )


@lab.command("check")
@_lab_options
@click.option(
    "--count", type=click.IntRange(1, 100), default=3, show_default=True, help="Pings per pair."
)
@click.option(
    "--perf", "with_perf", is_flag=True, help="Also measure throughput (lab perf, 1s x 1 round)."
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Make FILE the lab's policies, then probe every pod pair (TCP/UDP 80, 81): "
    "expected (model) vs observed.",
)
def lab_check(
    name: str, state_dir: Path, count: int, with_perf: bool, policy_file: Path | None
) -> None:
    """Ping every pod from every other pod and check that no NAT happens."""
    from flannelish.lab import render
    from flannelish.lab.check import check

    state = _load(state_dir, name)
    if policy_file is not None:
        from flannelish.lab.build import flannelish_exe
        from flannelish.lab.policy import check_policy, print_check

        if not print_check(check_policy(state, policy_file, flannelish_exe()), click.echo):
            sys.exit(ExitCode.ERROR)
        return
    console = _console()
    started = time.monotonic()
    report = check(state, count)
    for table in render.check_tables(report):
        console.print(table)
    for problem in report.problems:
        console.print(f"{render.BAD} {problem}")
    failed_pings = [p for p in report.pings if not p.ok]
    failed_nat = [n for n in report.nat if not n.ok]
    rtts = {
        kind: [p.rtt_avg_ms for p in report.pings if p.same_node == same and p.rtt_avg_ms]
        for kind, same in (("cross-node", False), ("same-node", True))
    }
    rtt = ", ".join(
        f"{kind} average RTT {sum(vals) / len(vals):.3f} ms" for kind, vals in rtts.items() if vals
    )
    if rtt:
        console.print(rtt)
    if with_perf:
        from flannelish.lab import perf

        for measured in perf.perf_families(state, seconds=1, rounds=1):
            console.print(perf.table(measured))
            console.print(perf.summary(measured))
    summary = (
        f"{len(report.pings) - len(failed_pings)}/{len(report.pings)} pairs reachable, "
        f"{len(report.nat) - len(failed_nat)}/{len(report.nat)} probes without NAT"
    )
    if state.spec.ip_family != "ipv4":  # per family: IPv4 12/12 pings, 6/6 probes, IPv6 ...
        summary += "; " + "; ".join(render.family_counts(report, f) for f in state.spec.families)
    summary += f" ({time.monotonic() - started:.1f}s)"
    if not report.ok:
        console.print(f"{render.BAD} check failed: {summary}")
        sys.exit(ExitCode.ERROR)
    console.print(f"{render.OK} check passed: {summary}")


@lab.command("perf")
@_lab_options
@click.option("--seconds", type=click.IntRange(1, 60), default=2, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    help="Also write figures (a dual-stack lab measured in both families: one set per "
    'family, under "families").',
)
@click.option(
    "--family",
    type=click.Choice(["4", "6"]),
    default=None,
    help="Measure between IPv4 or IPv6 addresses only (default: every family the lab has).",
)
def lab_perf(
    name: str,
    state_dir: Path,
    seconds: int,
    rounds: int,
    json_path: Path | None,
    family: str | None,
) -> None:
    """Pod-to-pod throughput (iperf3) same-node and cross-node, next to the underlay's."""
    import json

    from flannelish.lab import perf

    state = _load(state_dir, name)
    console = _console()
    reports = perf.perf_families(
        state, seconds=seconds, rounds=rounds, family=int(family) if family else None
    )
    for report in reports:
        console.print(perf.table(report))
        console.print(perf.summary(report))
    if json_path is not None:
        figures = [perf.as_json(r) for r in reports]
        doc = figures[0] if len(figures) == 1 else {"families": figures}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
    if any(r.error for report in reports for r in report.results):
        sys.exit(ExitCode.ERROR)


@lab.command("status")
@_lab_options
def lab_status(name: str, state_dir: Path) -> None:
    """Show the lab's nodes, pods and whether its processes still run."""
    from flannelish.lab import render
    from flannelish.lab.state import load_state

    names.validate_lab_name(name)
    state = load_state(names.lab_dir(state_dir, name))
    if state is None:
        raise NotAvailableError(f"no lab named {name!r} in {state_dir}")
    console = _console()
    if state.phase == "up":
        console.print(render.lab_table(state))
    console.print(render.status_table(state))
    if state.error:
        console.print(f"last error: {state.error}")
    if state.phase != "up" or not all(row[1] for row in render.health(state)):
        sys.exit(ExitCode.ERROR)


@lab.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@_lab_options
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(name: str, state_dir: Path, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a node, pod or `underlay` namespace (e.g. node1-pod1 -- ip addr)."""
    if command[:1] == ("--",):  # `lab exec node1 -- ip addr`: the separator is not the command
        command = command[1:]
    if not command:
        raise click.UsageError("no command given (e.g. `flannelish lab exec node1 -- ip addr`)")
    state = _load(state_dir, name)
    netns = state.target_netns(target)
    argv = ["ip", "netns", "exec", netns, *command]
    node = state.node(target)
    if node is not None:
        argv = _with_wireguard_sockets(node, argv)
    # Inside the lab, `flannelish status`, `doctor`, `leases` and friends just work:
    # our own bin dir on PATH, and in a node the node daemon's settings
    # (FLANNELD_HEALTHZ_PORT, FLANNELD_SUBNET_FILE, FLANNELD_ETCD_ENDPOINTS, ...).
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    env.update(state.node_env(target))
    os.execvpe(argv[0], argv, env)


def _with_wireguard_sockets(node: NodeState, argv: list[str]) -> list[str]:
    """`argv` (``ip netns exec NODE ...``) with the node's WireGuard devices in
    /run/wireguard, so `wg show` sees them.

    Each of the node's wireguard-go (one per device: flannel-wg, flannel-wg-v6)
    keeps its socket in a private /run/wireguard of its own; the command gets a
    private mount namespace whose /run/wireguard (a tmpfs) links to each of them.
    """
    from flannelish.kernel.wireguard_go import node_wireguard_go

    links = []
    for device in names.WIREGUARD_DEVICES.values():
        go = node_wireguard_go(Path(node.subnet_file).parent, device)
        if go is not None and go.private_run:
            links.append(f"ln -s {shlex.quote(go.socket_path())} /run/wireguard/{device}.sock")
    if not links:
        return argv
    script = " && ".join(
        [
            "mkdir -p /run/wireguard",
            "mount -t tmpfs -o mode=0700,size=1m flannelish-wg /run/wireguard",
            *links,
            'exec "$@"',
        ]
    )
    head, command = argv[:4], argv[4:]  # ip netns exec NETNS | COMMAND
    return [*head, "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sh", *command]  # fmt: skip


@lab.command("diagram")
@_lab_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("lab-diagram.svg"),
    show_default=True,
    help="Where to write the picture; .svg, .png or .dot by its suffix.",
)
def lab_diagram(name: str, state_dir: Path, out: Path) -> None:
    """Draw the live lab: nodes, pods, and every peer link as the daemons report it.

    \b
    Each node shows its underlay/public address, pod subnet, MTU and VTEP MAC;
    each pair of nodes one edge labelled with the backend (VXLAN VNI and port,
    host-gw routes). Peers a daemon skipped, and daemons that are down or not
    ready (from each daemon's /status inside its node), are drawn in red.
    """
    from flannelish.errors import ConfigError
    from flannelish.lab import diagram

    fmt = out.suffix.lstrip(".").lower() or "svg"
    if fmt not in diagram.FORMATS:
        raise ConfigError(f"--out {out}: unknown picture format {fmt!r}", "use .svg, .png or .dot")
    state = _load(state_dir, name)
    started = time.monotonic()
    topo = diagram.gather(state)
    data = diagram.render(topo, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    problems = [f"{p.a}-{p.b} {p.status}: {p.detail}" for p in topo.peers if p.status != "ok"]
    problems += [f"{n.name} daemon {n.health}: {n.problem}" for n in topo.nodes if n.health != "ok"]
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(
        f"wrote {out} ({len(topo.nodes)} nodes, {sum(len(n.pods) for n in topo.nodes)} pods, "
        f"{len(topo.peers)} peer links, {len(problems)} problems; "
        f"{time.monotonic() - started:.1f}s)"
    )


@lab.command("down")
@_lab_options
def lab_down(name: str, state_dir: Path) -> None:
    """Remove the lab: stop its processes, delete its namespaces and state (idempotent)."""
    from flannelish.lab.state import load_state, locked
    from flannelish.lab.teardown import remove_leftover_netns, teardown

    names.validate_lab_name(name)
    started = time.monotonic()
    directory = names.lab_dir(state_dir, name)
    if not directory.exists():
        report = remove_leftover_netns(name)
        extra = f" (removed leftover namespaces {', '.join(report.netns)})" if report.netns else ""
        click.echo(f"no lab named {name!r} in {state_dir}; nothing to do{extra}")
        return
    with locked(directory):
        state = load_state(directory)
        if state is None:
            report = remove_leftover_netns(name)
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
        else:
            report = teardown(state)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"lab {name!r} removed: stopped {len(report.stopped)} processes, "
        f"deleted {len(report.netns)} namespaces and {directory} "
        f"({time.monotonic() - started:.1f}s)"
    )


@click.command("verify")
@_lab_options
@click.option(
    "--pcap",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save the capture to this file (opens in Wireshark).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write an HTML report here: assertions, the lab's diagram and a packet "
    "journey per flow from captures at every hop (DIR/index.html, DIR/pcaps/).",
)
def verify(name: str, state_dir: Path, pcap: Path | None, report_dir: Path | None) -> None:
    """Capture on the lab's underlay while pods talk, and prove what crosses it.

    \b
    With --report DIR, every hop of four flows per IP family (cross-node ICMP,
    TCP, UDP and a same-node ping) is captured too, from the source pod's eth0
    through cni0, the tunnel device and the underlay to the destination pod, and
    DIR/index.html shows each packet's journey: the headers decoded at every
    hop, where it is wrapped and unwrapped, and that pod addresses never change.
    """
    from flannelish.lab import render
    from flannelish.lab.verify import verify as run_verify

    state = _load(state_dir, name)
    console = _console()
    started = time.monotonic()
    hop_dir = report_dir / "pcaps" if report_dir is not None else None
    report = run_verify(state, pcap, hop_dir)
    console.print(render.verify_table(report.analysis))
    counts = report.analysis.counts
    tunnelled = (
        f"{counts['wireguard']} WireGuard packets"
        if state.spec.backend == "wireguard"
        else f"{counts['vxlan']} VXLAN pod packets"
    )
    console.print(
        f"captured {report.analysis.frames} frames on {names.BRIDGE} in {state.underlay_netns} "
        f"({time.monotonic() - started:.1f}s): {tunnelled}, "
        f"{counts['pod-unencapsulated']} unencapsulated pod packets,\n"
        f"{counts['underlay']} other underlay packets, {counts['non-ip']} non-IP frames; "
        f"pcap: {report.pcap}"
    )
    if report_dir is not None:
        from flannelish.lab.report import write_report

        written = write_report(state, report, report_dir)
        for j in written.journeys:
            bad = [f.text for f in j.findings if not f.ok]
            mark = render.OK if not bad else render.BAD
            console.print(f"{mark} journey {j.flow.id}: " + ("; ".join(bad) or next(
                (f.text for f in j.findings if f.kind == "nat"), "")))  # fmt: skip
        console.print(
            f"report: {written.index} ({report.hop_seconds + written.seconds:.1f}s on top of "
            f"verify: per-hop capture {report.hop_seconds:.1f}s, journeys, diagram and page "
            f"{written.seconds:.1f}s; per-hop pcaps in {hop_dir})"
        )
    failed = report.analysis.failed
    if failed:
        for verdict in failed:
            click.echo(f"FAILED: {verdict.name}: {verdict.detail}", err=True)
        sys.exit(ExitCode.ERROR)
    console.print(f"{render.OK} verify passed: {len(report.analysis.verdicts)} assertions")


COMMANDS = [lab, verify]
