"""`flannelish status` and `flannelish doctor`: local node health.

`status` asks the local daemon's health server for ``/status`` (JSON, schema
in docs/architecture.md, "Contracts between packages"), so it needs the daemon's
``--healthz-port`` (same flag and FLANNELD_HEALTHZ_PORT env as the daemon).
`doctor` reads the node itself (links, sysctls, nftables, subnet.env) and,
unless ``--no-etcd``, the leases; it works when the daemon is down, which
is when it is needed most.  Both run in the node's network namespace.
"""

from __future__ import annotations

import datetime
import functools
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from flannelish.cli.etcd_options import etcd_options
from flannelish.errors import ConfigError, ExitCode, NotAvailableError

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"


def subnet_file_option(help_text: str) -> Any:
    """--subnet-file as the daemon takes it (shared with `daemon`)."""
    return click.option(
        "--subnet-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_SUBNET_FILE,
        show_default=True,
        envvar="FLANNELD_SUBNET_FILE",
        show_envvar=True,
        help=help_text,
    )


def renew_margin_option(help_text: str) -> Any:
    """--subnet-lease-renew-margin in minutes, as the daemon takes it (shared with `daemon`)."""
    return click.option(
        "--subnet-lease-renew-margin",
        type=click.IntRange(1, 1439),
        default=60,
        show_default=True,
        envvar="FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
        show_envvar=True,
        help=help_text,
    )


def healthz_options(command: Any) -> Any:
    """--healthz-ip/--healthz-port with the daemon's env names (shared with `daemon`)."""
    command = click.option(
        "--healthz-port",
        type=click.IntRange(0, 65535),
        default=0,
        envvar="FLANNELD_HEALTHZ_PORT",
        show_envvar=True,
        help="Port of the daemon's health server (0 = off).",
    )(command)
    return click.option(
        "--healthz-ip",
        default="0.0.0.0",
        show_default=True,
        envvar="FLANNELD_HEALTHZ_IP",
        show_envvar=True,
        help="Address of the daemon's health server.",
    )(command)


def node_ops_options(command: Any) -> Any:
    """For `flannelish daemon`: --healthz-ip/--healthz-port/--vxlan-allow-any.

    The command receives ``node_ops=NodeOpsOptions(...)`` instead of the three
    values; ``ip_masq`` is taken from the command's own --ip-masq if it has one.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from flannelish.node.ops import NodeOpsOptions

        kwargs["node_ops"] = NodeOpsOptions(
            ip_masq=bool(kwargs.get("ip_masq", False)),
            forward=bool(kwargs.get("iptables_forward_rules", True)),
            fully_random=not kwargs.get("ip_masq_fully_random_disable", False),
            vxlan_allow_any=kwargs.pop("vxlan_allow_any"),
            healthz_ip=kwargs.pop("healthz_ip"),
            healthz_port=kwargs.pop("healthz_port"),
        )
        return command(*args, **kwargs)

    wrapper = click.option(
        "--vxlan-allow-any/--no-vxlan-allow-any",
        default=False,
        show_default=True,
        envvar="FLANNELD_VXLAN_ALLOW_ANY",
        show_envvar=True,
        help="Accept VXLAN from any source (turns off the drop of non-peer VXLAN).",
    )(wrapper)
    return healthz_options(wrapper)


def fetch_status(host: str, port: int, timeout: float) -> dict[str, Any]:
    if port == 0:
        raise ConfigError(
            "the daemon's health port is not known",
            "pass --healthz-port (or set FLANNELD_HEALTHZ_PORT) as given to the daemon",
        )
    # A daemon listening on the wildcard address is reached on the loopback.
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotAvailableError(f"daemon not reachable at {url}", str(reason)) from None
    except ValueError as exc:
        raise NotAvailableError(f"{url} did not return JSON", str(exc)) from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise NotAvailableError(f"{url} returned an unknown status format", repr(doc)[:120])
    return doc


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    at = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = ts - time.time()
    rel = f"in {int(delta)} s" if delta >= 0 else f"{int(-delta)} s ago"
    return f"{at} ({rel})"


class _Rows:
    """Aligned "key  value" lines (a table that never wraps or truncates in pipes)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def add_row(self, key: str, value: str) -> None:
        self.rows.append((key, value))

    def lines(self) -> list[str]:
        width = max((len(k) for k, _ in self.rows), default=0)
        return [f"[bold]{k.ljust(width)}[/]  {v}" for k, v in self.rows]


def _family_line(info: dict[str, Any]) -> str:
    """One family of the /status `by_family` section: lease half, device, peers."""
    device = info.get("device") or "-"
    extras = [f"MTU {info['mtu']}"] if info.get("mtu") else []
    if info.get("vtep_mac"):
        extras.append(f"VTEP MAC {info['vtep_mac']}")
    if extras:
        device += f" ({', '.join(extras)})"
    return (
        f"{info.get('subnet') or '-'} of {info.get('network') or '-'} "
        f"via {info.get('public_ip') or '-'}, device {device}, "
        f"{info.get('peers', 0)} peer(s) programmed"
    )


def _policy_rows(table: _Rows, pol: dict[str, Any]) -> None:
    """The daemon's network-policy section (flannelish.policy.agent.PolicyAgent.status)."""
    from rich.markup import escape

    state = "[green]enforced[/]" if pol.get("applied") else "[red]NOT APPLIED[/]"
    table.add_row(
        "policy",
        f"{state}: {pol.get('policies', 0)} policies, {pol.get('endpoints', 0)} endpoints "
        f"({pol.get('local_endpoints', 0)} here), {pol.get('rules', 0)} rules, "
        f"{pol.get('sets', 0)} sets / {pol.get('set_elements', 0)} elements "
        f"(largest {pol.get('largest_set', 0)})",
    )
    table.add_row(
        "",
        f"{pol.get('converges', 0)} change(s) applied, last {1000 * pol.get('last_seconds', 0):.1f}"
        f" ms; {pol.get('repairs', 0)} repair(s), {pol.get('errors', 0)} error(s)",
    )
    hooks = pol.get("bridge_hooks", "on")
    if hooks != "on":
        table.add_row("", f"[red]same-node traffic not policed: {escape(str(hooks))}[/]")
    if pol.get("last_error"):
        table.add_row("", f"[red]{escape(str(pol['last_error']))}[/]")
    drops = sorted((pol.get("drops") or {}).items(), key=lambda d: (-d[1], d[0]))
    dropped = ", ".join(f"{escape(k)} {v}" for k, v in drops if v)
    if dropped:
        table.add_row("", f"dropped packets: {dropped}")
    for key, why in sorted((pol.get("bad_keys") or {}).items()):
        table.add_row("", f"[yellow]skipped {escape(key)}: {escape(str(why))}[/]")


def _wireguard_rows(table: _Rows, wg: dict[str, Any]) -> None:
    """The WireGuard section: implementation and key, then per device (flannel-wg,
    flannel-wg-v6) its family, port and wireguard-go, and the peers on it."""
    from rich.markup import escape

    table.add_row(
        "wireguard",
        f"{escape(wg.get('implementation') or '-')}; public key {wg.get('public_key') or '-'}",
    )
    mode = wg.get("key_file_mode")
    bad = mode is None or int(mode, 8) & 0o077
    shown = mode or "MISSING"
    table.add_row(
        "key file",
        f"{'[red]' if bad else ''}{escape(str(wg.get('key_file')))} mode {shown}"
        f"{'[/]' if bad else ''}",
    )
    devices = [d for d in wg.get("devices") or [] if isinstance(d, dict)]
    if not devices:  # a daemon from before per-device status: its one device
        devices = [
            {
                "device": wg.get("device") or "-",
                "wireguard_go_pid": wg.get("wireguard_go_pid"),
                "wireguard_go_restarts": wg.get("wireguard_go_restarts", 0),
            }
        ]
    peers = [p for p in wg.get("peers") or [] if isinstance(p, dict)]
    for dev in devices:
        name = str(dev.get("device") or "-")
        facts = [f.replace("ipv", "IPv") for f in dev.get("families") or []]
        if dev.get("listen_port"):
            facts.append(f"udp/{dev['listen_port']}")
        if dev.get("wireguard_go_pid"):
            facts.append(
                f"wireguard-go pid {dev['wireguard_go_pid']}, "
                f"{dev.get('wireguard_go_restarts', 0)} restart(s)"
            )
        table.add_row(f"  {name}", escape(", ".join(facts) or "-"))
        for peer in peers:
            if peer.get("device", name) != name:
                continue
            age = peer.get("handshake_age_seconds")
            hs = "[yellow]no handshake[/]" if age is None else f"handshake {age:.0f}s ago"
            # An IPv6 endpoint is "[fd18::2]:51821": escaped, or rich reads it as a tag.
            allowed = ", ".join(peer.get("allowed_ips") or [])
            where = escape(f"{allowed} at {peer.get('endpoint') or '-'}")
            table.add_row(
                "",
                f"{where}: {hs}, rx {peer.get('rx_bytes', 0)} B, tx {peer.get('tx_bytes', 0)} B",
            )


def render_status(doc: dict[str, Any]) -> list[str]:
    """The status document as rich-markup lines."""
    from rich.markup import escape

    lease = doc.get("lease") or {}
    peers = doc.get("peers") or {}
    last = doc.get("last_reconcile") or {}
    table = _Rows()
    ready = "[green]ready[/]" if doc.get("ready") else "[red]NOT READY[/]"
    table.add_row("node", f"{doc.get('node') or '-'}  {ready}")
    expiry = lease.get("expiration")
    expires = "never (reservation)" if lease.get("held") and expiry is None else _when(expiry)
    half = ("", "")
    if lease.get("subnet") in (None, "0.0.0.0/0") and lease.get("ipv6_subnet"):
        half = ("ipv6_", "v6")  # an IPv6-only lease: its IPv4 half is 0.0.0.0/0
    subnet, network = lease.get(f"{half[0]}subnet"), lease.get(f"{half[0]}network")
    table.add_row(
        "lease",
        f"{subnet or '-'} of {network or '-'} "
        f"via {lease.get(f'public_ip{half[1]}') or '-'}, expires {expires}",
    )
    table.add_row("backend", f"{doc.get('backend') or '-'}  device {doc.get('device') or '-'}")
    for family, info in sorted((doc.get("by_family") or {}).items()):
        if isinstance(info, dict):
            table.add_row(f"  {family}", escape(_family_line(info)))
    skipped = peers.get("skipped") or {}
    n_skipped = peers.get("skipped_count", len(skipped))
    suffix = ""
    if n_skipped:
        suffix = f", {n_skipped} skipped" + ("" if skipped else " (reasons in the daemon log)")
    table.add_row(
        "peers",
        f"{peers.get('programmed', 0)} programmed of {peers.get('in_etcd', 0)} in etcd{suffix}",
    )
    for subnet, why in sorted(skipped.items()):
        table.add_row("", f"[yellow]skipped {subnet}: {escape(str(why))}[/]")
    if last:
        table.add_row(
            "last reconcile",
            f"{_when(last.get('at'))}, {last.get('changes', 0)} change(s), "
            f"{last.get('errors', 0)} error(s), {1000 * last.get('seconds', 0):.1f} ms",
        )
    else:
        table.add_row("last reconcile", "-")
    wg = doc.get("wireguard")
    if wg:
        _wireguard_rows(table, wg)
    pol = doc.get("policy")
    if pol:
        _policy_rows(table, pol)
    env = doc.get("subnet_env") or {}
    table.add_row(
        "subnet.env",
        f"{env.get('path') or '-'} ({'written' if env.get('written') else 'not written'})",
    )
    for check in doc.get("checks", []):
        mark = "[green]ok[/]" if check.get("ok") else "[red]FAIL[/]"
        table.add_row(f"  {check.get('name')}", f"{mark} {escape(str(check.get('detail', '')))}")
    return table.lines()


@click.command("status")
@healthz_options
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's status document.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True)
def status_command(healthz_ip: str, healthz_port: int, as_json: bool, timeout: float) -> None:
    """Show this node's lease, device, peers, last reconcile and readiness.

    \b
    Exit statuses: 0 ready, 1 not ready, 3 health port not given,
    8 daemon not reachable.
    """
    doc = fetch_status(healthz_ip, healthz_port, timeout)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True, emoji=False)
        for line in render_status(doc):
            console.print(line)
    if not doc.get("ready"):
        click.get_current_context().exit(int(ExitCode.ERROR))


_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


@click.command("doctor")
@etcd_options
@subnet_file_option("The daemon's subnet.env.")
@click.option("--device", default=None, help="Overlay device  [default: the flannel.* vxlan]")
@click.option("--no-etcd", is_flag=True, help="Skip the lease checks (no etcd access).")
@renew_margin_option("Minutes; a lease closer to expiry than this was not renewed.")
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
def doctor_command(
    etcd: Any,
    subnet_file: Path,
    device: str | None,
    no_etcd: bool,
    subnet_lease_renew_margin: int,
    as_json: bool,
) -> None:
    """Check this node for the classic Flannel problems and print a fix for each.

    MTU mismatches, a firewall dropping VXLAN or forwarded pod traffic,
    ip_forward / br_netfilter, a missing subnet.env, duplicate PublicIPs or
    VTEP MACs among the leases, and leases nobody renews.

    \b
    Exit statuses: 0 no errors (warnings allowed), 1 at least one error.
    """
    from flannelish.node import doctor
    from flannelish.node import facts as node_facts

    leases = None if no_etcd else _lease_reader(etcd)
    facts = node_facts.collect(
        subnet_file,
        device=device,
        leases=leases,
        etcd_prefix=etcd.prefix,
        renew_margin=subnet_lease_renew_margin * 60.0,
    )
    report = doctor.run_checks(facts)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape

        console = Console(highlight=False, soft_wrap=True, emoji=False)
        for name, findings in report.results:
            if not findings:
                console.print(f"[green]ok[/]       {name}")
            for f in findings:
                style = _STYLE[f.severity.value]
                console.print(f"[{style}]{f.severity.value:<8}[/] {name}: {escape(f.message)}")
                if f.fix:
                    console.print(f"         fix: {escape(f.fix)}")
    if not report.ok:
        click.get_current_context().exit(int(ExitCode.ERROR))


def _lease_reader(etcd: Any) -> Any:
    def read() -> list[Any]:
        from flannelish.subnet.manager import SubnetManager
        from flannelish.subnet.registry import EtcdRegistry

        registry = EtcdRegistry(etcd)
        try:
            return list(SubnetManager(registry).list_leases())
        finally:
            registry.close()

    return read


@click.command("uninstall")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@subnet_file_option("subnet.env; the network-policy marker next to it is removed too.")
def uninstall_command(dry_run: bool, yes: bool, subnet_file: Path) -> None:
    """Take this node out of the overlay: remove the overlay device, our routes and the
    nftables table (the daemon leaves all three in place when it stops, so pods keep
    their network during restarts).  Stop the daemon first.  Leases stay in etcd until
    they expire; subnet.env stays so a re-installed node gets its subnet back."""
    from flannelish.kernel.nft import NftCli
    from flannelish.kernel.rawnetlink import RawNetlink
    from flannelish.node.teardown import teardown

    nl = RawNetlink()
    try:
        plan = teardown(nl, NftCli(), dry_run=True, state_dir=subnet_file.parent)
        if plan.empty:
            click.echo("nothing of flannelish's is left on this node")
            return
        for what, items in (
            ("route", plan.routes),
            ("nexthop", plan.nexthops),
            ("device", plan.devices),
            ("nft table", plan.tables),
            ("file", plan.files),
        ):
            for item in items:
                click.echo(f"{'would remove' if dry_run else 'remove'} {what} {item}")
        if dry_run:
            return
        if not yes:
            click.confirm("remove these from this node?", abort=True)
        done = teardown(nl, NftCli(), state_dir=subnet_file.parent)
        click.echo(
            f"removed {len(done.routes)} routes, {len(done.nexthops)} nexthops, "
            f"{len(done.devices)} devices, "
            f"{len(done.tables)} nft tables"
        )
    finally:
        nl.close()


COMMANDS = [status_command, doctor_command, uninstall_command]
