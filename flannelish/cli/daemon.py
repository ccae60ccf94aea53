"""`flannelish daemon`: the per-node agent (flanneld-compatible flags).

Only click and the standard library are imported at module level; the
daemon's machinery (the kernel layer, the etcd client and gRPC) is imported
when it runs.
"""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Any

import click

from flannelish import __version__
from flannelish.cli.etcd_options import etcd_options
from flannelish.cli.goflags import GoFlagsCommand
from flannelish.cli.node import node_ops_options, renew_margin_option, subnet_file_option
from flannelish.errors import ExitCode
from flannelish.logs import LOG_FORMATS, setup_logging

GIL_SWITCH_SECONDS = 0.001  # see daemon_command: lease events never wait 5 ms per GIL hand-off

# flanneld's Kubernetes subnet-manager flags (docs/flannel-compat.md §10): refused.
KUBE_FLAGS = (
    "kube-api-url",
    "kubeconfig-file",
    "kube-annotation-prefix",
    "set-node-network-unavailable",
)


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeatable flags also accept comma lists (as FLANNELD_IFACE=eth0,eth1 does)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"flannelish {__version__}")
        ctx.exit(0)


def _flanneld_options(command: Any) -> Any:
    """flanneld's flags with no flannelish counterpart (docs/flannel-compat.md §10).

    The command receives ``flanneld={name: value}``; the Kubernetes ones are
    refused in the command body with exit status 2.
    """
    kube = [
        click.option(
            "--kube-subnet-mgr/--no-kube-subnet-mgr",
            default=False,
            envvar="FLANNELD_KUBE_SUBNET_MGR",
            hidden=True,
        ),
        *(
            click.option(f"--{name}", default=None, envvar=_env(name), hidden=True)
            for name in KUBE_FLAGS
        ),
    ]
    noops = [
        click.option(
            "--vmodule",
            default=None,
            envvar="FLANNELD_VMODULE",
            help="Accepted for flanneld compatibility; no effect (klog per-file verbosity).",
        ),
        click.option(
            "--log_backtrace_at",
            default=None,
            envvar="FLANNELD_LOG_BACKTRACE_AT",
            help="Accepted for flanneld compatibility; no effect (klog stack traces).",
        ),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        names = ["kube_subnet_mgr", *(n.replace("-", "_") for n in KUBE_FLAGS)]
        names += ["vmodule", "log_backtrace_at"]
        kwargs["flanneld"] = {name: kwargs.pop(name) for name in names}
        return command(*args, **kwargs)

    for option in reversed([*noops, *kube]):
        wrapper = option(wrapper)
    return wrapper


def _env(name: str) -> str:
    return "FLANNELD_" + name.upper().replace("-", "_")


def _refuse_kubernetes(flanneld: dict[str, Any]) -> None:
    given = ["--kube-subnet-mgr"] if flanneld["kube_subnet_mgr"] else []
    given += [f"--{n}" for n in KUBE_FLAGS if flanneld[n.replace("-", "_")] is not None]
    if given:
        click.echo(
            f"flannelish: error: {', '.join(given)}: the Kubernetes subnet manager is not "
            "supported; flannelish keeps its subnet leases in etcd only (drop the Kubernetes "
            "flags and pass --etcd-endpoints)",
            err=True,
        )
        click.get_current_context().exit(int(ExitCode.USAGE))


def _verbosity(v: int | None) -> None:
    """klog's -v onto our log levels: 0 = info (flanneld's default), 1 or more = debug."""
    if v is None:
        return
    import logging

    logging.getLogger().setLevel(logging.DEBUG if v >= 1 else logging.INFO)
    if v >= 10:  # flanneld's most verbose: the libraries' debug lines too
        for noisy in ("scapy",):
            logging.getLogger(noisy).setLevel(logging.DEBUG)


@click.command("daemon", cls=GoFlagsCommand)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit.",
)
@etcd_options
@click.option(
    "--iface",
    multiple=True,
    envvar="FLANNELD_IFACE",
    show_envvar=True,
    help="Underlay interface name or IPv4 address; repeatable, first match wins.",
)
@click.option(
    "--iface-regex",
    multiple=True,
    envvar="FLANNELD_IFACE_REGEX",
    show_envvar=True,
    help="Regex matched against interface addresses, then names; repeatable.",
)
@click.option(
    "--iface-can-reach",
    default=None,
    envvar="FLANNELD_IFACE_CAN_REACH",
    show_envvar=True,
    help="Use the interface (and source address) of the route to this IPv4 address "
    "(`ip route get`); tried after --iface and --iface-regex.",
)
@click.option(
    "--public-ip",
    envvar="FLANNELD_PUBLIC_IP",
    show_envvar=True,
    help="IPv4 address peers reach this node on (default: the interface address).",
)
@click.option(
    "--public-ipv6",
    envvar="FLANNELD_PUBLIC_IPV6",
    show_envvar=True,
    help="IPv6 address peers reach this node on (default: the interface's global IPv6 address).",
)
@subnet_file_option("Where subnet.env is written; the VTEP MAC and the CNI socket live next to it.")
@click.option(
    "--ip-masq/--no-ip-masq",
    default=False,
    show_default=True,
    envvar="FLANNELD_IP_MASQ",
    show_envvar=True,
    help="Write FLANNEL_IPMASQ=true to subnet.env (the node, not the CNI bridge, masquerades).",
)
@click.option(
    "--ip-masq-fully-random-disable/--no-ip-masq-fully-random-disable",
    default=False,
    show_default=True,
    envvar="FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE",
    show_envvar=True,
    help="Masquerade without fully-random port mapping.",
)
@click.option(
    "--iptables-forward-rules/--no-iptables-forward-rules",
    default=True,
    show_default=True,
    envvar="FLANNELD_IPTABLES_FORWARD_RULES",
    show_envvar=True,
    help="Accept forwarded pod-network traffic (chain forward of table ip flannelish).",
)
@click.option(
    "--iptables-resync",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    envvar="FLANNELD_IPTABLES_RESYNC",
    show_envvar=True,
    help="Seconds between full checks of the nftables table (flanneld: of its iptables rules).",
)
@click.option(
    "--ip-blackhole-route/--no-ip-blackhole-route",
    default=False,
    show_default=True,
    envvar="FLANNELD_IP_BLACKHOLE_ROUTE",
    show_envvar=True,
    help="Keep a blackhole route for our own subnet (lowest preference, checked every "
    "--resync-interval), so traffic to unassigned pod IPs is dropped instead of following "
    "the default route.",
)
@click.option(
    "--net-config-path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="FLANNELD_NET_CONFIG_PATH",
    show_envvar=True,
    help="A net-conf.json written to etcd when etcd holds no network config "
    "(the config in etcd always wins).",
)
@renew_margin_option("Minutes before the lease expires to renew it.")
@click.option(
    "--resync-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    envvar="FLANNELD_RESYNC_INTERVAL",
    show_envvar=True,
    help="Seconds between full kernel-vs-etcd reconcile passes (at least 20 times a "
    "pass's own duration, so the periodic pass stays under 5 % of a CPU).",
)
@click.option(
    "--cni-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="FLANNELD_CNI_SOCKET",
    show_envvar=True,
    help="Unix socket for the CNI plugin  [default: <dir of --subnet-file>/flannelish.sock]",
)
@click.option(
    "--policy/--no-policy",
    default=False,
    envvar="FLANNELISH_POLICY",
    show_envvar=True,
    help="Enforce NetworkPolicy from etcd (table inet flannelish-policy; see README).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="Log line format (overrides the global --log-format).",
)
@click.option(
    "-v",
    "--v",
    "verbosity",
    type=click.IntRange(min=0),
    default=None,
    envvar="FLANNELD_V",
    help="flanneld's log verbosity: 0 = info, 1 or more = debug (overrides --log-level).",
)
@_flanneld_options
@node_ops_options
def daemon_command(
    etcd: Any,
    iface: tuple[str, ...],
    iface_regex: tuple[str, ...],
    iface_can_reach: str | None,
    public_ip: str | None,
    public_ipv6: str | None,
    subnet_file: Path,
    ip_masq: bool,
    ip_masq_fully_random_disable: bool,
    iptables_forward_rules: bool,
    iptables_resync: int,
    ip_blackhole_route: bool,
    net_config_path: Path | None,
    subnet_lease_renew_margin: int,
    resync_interval: float,
    cni_socket: Path | None,
    policy: bool,
    log_format: str | None,
    verbosity: int | None,
    flanneld: dict[str, Any],
    node_ops: Any,
) -> None:
    """Run the node daemon (flanneld): take a subnet lease, build the overlay
    device, write subnet.env and keep every peer programmed in the kernel.

    Run it inside the node's network namespace.  SIGTERM or SIGINT stops it
    cleanly and leaves the data path in place; a restart keeps the subnet
    and the VTEP MAC.  It takes over a node flanneld ran (same subnet,
    device, MAC and peer entries; README, "Migrating from flanneld").

    Flags are flanneld's, in Go's syntax too (-iface=eth0, --ip-masq=false),
    and each can come from FLANNELD_<FLAG>.  Not supported: the Kubernetes
    subnet manager (--kube-subnet-mgr and the other --kube* flags, exit 2).

    \b
    Exit statuses:
      0  stopped by SIGTERM/SIGINT
      1  unexpected error
      2  bad flag value
      3  invalid network config or flags (e.g. no matching --iface)
      4  etcd unreachable or refused us
      5  no free subnet left
      6  lease lost and could not be re-acquired
      7  a kernel (netlink) operation failed
      8  a prerequisite is missing (e.g. no default route to pick an interface)
    """
    _refuse_kubernetes(flanneld)
    if log_format is not None:
        import logging

        setup_logging(log_format, logging.getLogger().level)
    _verbosity(verbosity)
    _log_ignored(flanneld)
    from flannelish.daemon.node import DaemonOptions, NodeDaemon

    options = DaemonOptions(
        etcd=etcd,
        subnet_file=subnet_file,
        ifaces=_split(iface),
        iface_regexes=list(iface_regex),
        iface_can_reach=iface_can_reach or None,
        public_ip=public_ip or None,
        public_ipv6=public_ipv6 or None,
        ip_masq=ip_masq,
        renew_margin_minutes=subnet_lease_renew_margin,
        resync_seconds=resync_interval,
        firewall_resync_seconds=float(iptables_resync),
        blackhole_route=ip_blackhole_route,
        net_config_path=net_config_path,
        cni_socket=cni_socket,
        node_ops=node_ops,
        policy=policy,
        freeze_gc_after_sync=True,
    )
    node = NodeDaemon(options)
    # A thread waiting for the GIL (a lease event's write after each netlink
    # round trip) waits up to this long while another thread computes (a full
    # pass of the other reconcile loop): 1 ms instead of CPython's 5 ms.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)

    def on_signal(signum: int, _frame: Any) -> None:
        node.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_ignored(flanneld: dict[str, Any]) -> None:
    import logging

    log = logging.getLogger("flannelish.daemon")
    for name in ("vmodule", "log_backtrace_at"):
        if flanneld[name]:
            log.info("-%s has no effect in flannelish (a klog option)", name)


COMMANDS = [daemon_command]
