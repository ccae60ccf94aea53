"""`flannelish daemon`: the per-node agent (flanneld-compatible flags).

Only click and the standard library are imported at module level; the
daemon's machinery (the kernel layer, the etcd client and gRPC) is imported
when it runs.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import click

from flannelish.cli.etcd_options import etcd_options
from flannelish.cli.node import node_ops_options, renew_margin_option, subnet_file_option
from flannelish.logs import LOG_FORMATS, setup_logging


def _split(values: tuple[str, ...]) -> list[str]:
    """Repeatable flags also accept comma lists (as FLANNELD_IFACE=eth0,eth1 does)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@click.command("daemon")
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
    "--public-ip",
    envvar="FLANNELD_PUBLIC_IP",
    show_envvar=True,
    help="IPv4 address peers reach this node on (default: the interface address).",
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
@renew_margin_option("Minutes before the lease expires to renew it.")
@click.option(
    "--resync-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    envvar="FLANNELD_RESYNC_INTERVAL",
    show_envvar=True,
    help="Seconds between full kernel-vs-etcd reconcile passes.",
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
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="Log line format (overrides the global --log-format).",
)
@node_ops_options
def daemon_command(
    etcd: Any,
    iface: tuple[str, ...],
    iface_regex: tuple[str, ...],
    public_ip: str | None,
    subnet_file: Path,
    ip_masq: bool,
    subnet_lease_renew_margin: int,
    resync_interval: float,
    cni_socket: Path | None,
    log_format: str | None,
    node_ops: Any,
) -> None:
    """Run the node daemon (flanneld): take a subnet lease, build the overlay
    device, write subnet.env and keep every peer programmed in the kernel.

    Run it inside the node's network namespace.  SIGTERM or SIGINT stops it
    cleanly and leaves the data path in place; a restart keeps the subnet
    and the VTEP MAC.

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
    if log_format is not None:
        import logging

        setup_logging(log_format, logging.getLogger().level)
    # The daemon forks `nft` while its etcd channel is open; gRPC's fork handlers
    # would only log warnings (docs/dependencies.md §2).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from flannelish.daemon.node import DaemonOptions, NodeDaemon

    options = DaemonOptions(
        etcd=etcd,
        subnet_file=subnet_file,
        ifaces=_split(iface),
        iface_regexes=list(iface_regex),
        public_ip=public_ip or None,
        ip_masq=ip_masq,
        renew_margin_minutes=subnet_lease_renew_margin,
        resync_seconds=resync_interval,
        cni_socket=cni_socket,
        node_ops=node_ops,
    )
    node = NodeDaemon(options)

    def on_signal(signum: int, _frame: Any) -> None:
        node.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


COMMANDS = [daemon_command]
