"""Operator commands on etcd: config put/get, leases, reserve, unreserve.

Each command validates its input before touching etcd, so a bad file or
subnet changes nothing; failures are FlannelishErrors, which the CLI group
prints as one line with the documented exit status (3 config, 4 etcd).
The etcd client (gRPC) and rich are imported inside the commands.
"""

from __future__ import annotations

import json
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

import click

from flannelish.cli.etcd_options import etcd_options
from flannelish.errors import ConfigError
from flannelish.subnet.config import NetworkConfig, parse_network_config
from flannelish.subnet.etcdstore import EtcdOptions
from flannelish.subnet.keys import Keys

if TYPE_CHECKING:
    from flannelish.subnet.lease import Lease
    from flannelish.subnet.registry import EtcdRegistry


def _registry(etcd: EtcdOptions) -> EtcdRegistry:
    from flannelish.subnet.registry import EtcdRegistry

    return EtcdRegistry(etcd)


# -- config ---------------------------------------------------------------------


@click.group("config")
def config_group() -> None:
    """Read or write the network config in etcd (<prefix>/config)."""


@config_group.command("put")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@etcd_options
def config_put(file: str, etcd: EtcdOptions) -> None:
    """Validate FILE (or - for stdin) as a Flannel network config, then store it."""
    raw = _read_input(file)
    try:
        config = parse_network_config(raw)
        _check_backend(config)
    except ConfigError as exc:
        source = "stdin" if file == "-" else file
        raise ConfigError(f"invalid network config in {source}", str(exc)) from None
    with _registry(etcd) as registry:
        registry.put_config(raw)
    click.echo(f"network config written to {Keys(etcd.prefix).config}: {_describe(config)}")


@config_group.command("get")
@etcd_options
def config_get(etcd: EtcdOptions) -> None:
    """Print the stored network config exactly as stored."""
    with _registry(etcd) as registry:
        raw = registry.get_config()
    if raw is None:
        raise ConfigError(
            f"no network config in etcd at {Keys(etcd.prefix).config}",
            "write one with `flannelish config put FILE`",
        )
    click.echo(raw.decode(errors="replace").rstrip("\n"))


def _check_backend(config: NetworkConfig) -> None:
    """Catch a Backend section our daemons would refuse, before it reaches every node."""
    from flannelish.backends import REGISTRY

    if config.backend_type not in REGISTRY:
        # Not an error: Flannel nodes sharing this etcd may have that backend.
        click.echo(
            f'warning: flannelish has no "{config.backend_type}" backend '
            f"(it has {', '.join(sorted(REGISTRY))}); flannelish daemons will refuse this config",
            err=True,
        )
    elif config.backend_type == "vxlan":
        from flannelish.backends.vxlan import VxlanOptions

        VxlanOptions.parse(config.backend)


def _read_input(file: str) -> bytes:
    try:
        if file == "-":
            return sys.stdin.buffer.read()
        with open(file, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {file}", exc.strerror) from None


def _describe(config: NetworkConfig) -> str:
    parts = []
    if config.enable_ipv4:
        parts.append(
            f"Network {config.network}, /{config.subnet_len} subnets "
            f"{config.subnet_min}..{config.subnet_max} ({config.subnet_count})"
        )
    if config.enable_ipv6:
        parts.append(f"IPv6Network {config.ipv6_network}, /{config.ipv6_subnet_len} subnets")
    parts.append(f"backend {config.backend_type}")
    return ", ".join(parts)


# -- leases ---------------------------------------------------------------------


@click.command("leases")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@etcd_options
def leases_command(as_json: bool, etcd: EtcdOptions) -> None:
    """List subnet leases and reservations."""
    from flannelish.subnet.manager import SubnetManager

    with _registry(etcd) as registry:
        leases = SubnetManager(registry).list_leases()
    now = time.time()
    if as_json:
        click.echo(json.dumps([_lease_doc(x, now) for x in leases], indent=2))
        return
    _print_table(leases, now)


def _lease_doc(lease: Lease, now: float) -> dict[str, Any]:
    return {
        "subnet": str(lease.subnet),
        "ipv6_subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
        "public_ip": str(lease.attrs.public_ip),
        "backend_type": lease.attrs.backend_type or None,
        "vtep_mac": lease.attrs.vtep_mac,
        "reserved": lease.reserved,
        "expires_in": None if lease.expiration is None else max(0, int(lease.expiration - now)),
        "lease_id": f"{lease.lease_id:x}" if lease.lease_id else None,
        "value": json.loads(lease.attrs.to_json()),
    }


def _print_table(leases: list[Lease], now: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("subnet", "public IP", "backend", "VTEP MAC", "expires in", "reserved"):
        table.add_column(column)
    for lease in leases:
        ip6 = lease.attrs.public_ipv6
        table.add_row(
            str(lease.key),  # both families: 10.5.34.0/24&fd00:0:0:22::/64
            " ".join(str(x) for x in (lease.attrs.public_ip, ip6) if x is not None),
            lease.attrs.backend_type or "-",
            lease.attrs.vtep_mac or "-",
            "never" if lease.expiration is None else _duration(lease.expiration - now),
            "yes" if lease.reserved else "no",
        )
    console = Console()
    if not console.is_terminal:  # piped: never cut a MAC or subnet to fit 80 columns
        console = Console(width=200)
    console.print(table)
    reserved = sum(1 for x in leases if x.reserved)
    console.print(f"{len(leases)} subnet(s): {len(leases) - reserved} leased, {reserved} reserved")


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


# -- reserve / unreserve -----------------------------------------------------------


class _Subnet(click.ParamType):
    name = "SUBNET"

    def convert(self, value: Any, param: Any, ctx: Any) -> IPv4Network:
        if isinstance(value, IPv4Network):
            return value
        text = str(value).strip()
        try:
            net = IPv4Network(text.replace("-", "/") if "/" not in text else text)
        except ValueError as exc:
            self.fail(f"{value!r} is not an IPv4 subnet such as 10.244.3.0/24 ({exc})", param, ctx)
        return net


class _IPv4(click.ParamType):
    name = "IP"

    def convert(self, value: Any, param: Any, ctx: Any) -> IPv4Address:
        try:
            return IPv4Address(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 address", param, ctx)


@click.command("reserve")
@click.argument("subnet", type=_Subnet())
@click.option("--public-ip", required=True, type=_IPv4(), help="The node that gets SUBNET.")
@etcd_options
def reserve_command(subnet: IPv4Network, public_ip: IPv4Address, etcd: EtcdOptions) -> None:
    """Reserve SUBNET for the node whose public IP is --public-ip.

    A reservation is a lease key without an etcd lease: it never expires, and
    the node with that public IP takes it when it (re)starts.
    """
    from flannelish.subnet.lease import LeaseAttrs
    from flannelish.subnet.manager import SubnetManager

    with _registry(etcd) as registry:
        config = SubnetManager(registry).get_network_config(wait=False)
        assert config is not None
        _check_in_pool(subnet, config)
        leases, _ = registry.list_leases()
        current = next((x for x in leases if x.subnet == subnet), None)
        clash = next((x for x in leases if x.subnet != subnet and x.subnet.overlaps(subnet)), None)
        if clash is not None:
            raise ConfigError(f"{subnet} overlaps {clash.subnet} of {clash.attrs.public_ip}")
        if current is None:
            written = registry.create_lease(subnet, LeaseAttrs(public_ip), None)
        elif current.attrs.public_ip != public_ip:
            kind = "reserved for" if current.reserved else "leased by"
            raise ConfigError(
                f"{subnet} is already {kind} {current.attrs.public_ip}",
                "unreserve it first" if current.reserved else "reserve it after that lease ends",
            )
        elif current.reserved:
            click.echo(f"{subnet} is already reserved for {public_ip}")
            return
        else:  # the node's own live lease becomes permanent
            written = registry.replace_lease(current, current.attrs, None)
        if written is None:
            raise ConfigError(f"{subnet} changed while reserving it; run the command again")
        other = [x for x in leases if x.attrs.public_ip == public_ip and x.subnet != subnet]
    click.echo(f"reserved {subnet} for {public_ip}")
    for lease in other:
        click.echo(
            f"note: {public_ip} still holds {lease.subnet}; it moves to {subnet} "
            "when its daemon restarts",
            err=True,
        )


@click.command("unreserve")
@click.argument("subnet", type=_Subnet())
@etcd_options
def unreserve_command(subnet: IPv4Network, etcd: EtcdOptions) -> None:
    """Remove the reservation of SUBNET (live leases are left alone)."""
    with _registry(etcd) as registry:
        current = registry.get_lease(subnet)
        if current is None:
            raise ConfigError(f"no reservation for {subnet} in etcd")
        if not current.reserved:
            raise ConfigError(
                f"{subnet} is a live lease of {current.attrs.public_ip}, not a reservation",
                "it ends when that node stops renewing it",
            )
        if not registry.delete_lease(current):
            raise ConfigError(f"{subnet} changed while removing it; run the command again")
    click.echo(f"removed the reservation of {subnet} (was for {current.attrs.public_ip})")


def _check_in_pool(subnet: IPv4Network, config: NetworkConfig) -> None:
    if not config.in_pool(subnet):
        raise ConfigError(
            f"{subnet} is not a subnet of the configured pool",
            f"expected a /{config.subnet_len} between {config.subnet_min} and "
            f"{config.subnet_max} in {config.network}",
        )


COMMANDS = [config_group, leases_command, reserve_command, unreserve_command]
