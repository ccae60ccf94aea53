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
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

import click

from flannelish.cli.etcd_options import etcd_options
from flannelish.errors import ConfigError
from flannelish.subnet.config import NetworkConfig, parse_network_config
from flannelish.subnet.etcdstore import EtcdOptions
from flannelish.subnet.keys import NO_IPV4, Keys, LeaseKey

if TYPE_CHECKING:
    from flannelish.subnet.lease import Lease, LeaseAttrs
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
    console = Console(emoji=False)
    if not console.is_terminal:  # piped: never cut a MAC or subnet to fit 80 columns
        console = Console(width=200, emoji=False)
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
    """A lease's subnet(s): IPv4 ``10.244.3.0/24``, IPv6 ``fd44:0:0:3::/64`` or both
    joined by ``&``; Flannel's key form (``10.244.3.0-24&fd44:0:0:3::-64``, IPv6-only
    ``0.0.0.0-0&fd44:0:0:3::-64``) works too."""

    name = "SUBNET"

    def convert(self, value: Any, param: Any, ctx: Any) -> LeaseKey:
        if isinstance(value, LeaseKey):
            return value
        key = _parse_subnets(str(value).strip())
        if key is None:
            self.fail(
                f"{value!r} is not a subnet such as 10.244.3.0/24, fd44:0:0:3::/64 or "
                "10.244.3.0/24&fd44:0:0:3::/64 (network address, no host bits)",
                param,
                ctx,
            )
        return key


def _parse_subnets(text: str) -> LeaseKey | None:
    parts = text.split("&")
    nets = []
    for part in parts:
        if "/" not in part and "-" in part:
            address, _, length = part.rpartition("-")  # Flannel's key form
            part = f"{address}/{length}"
        try:
            nets.append(ip_network(part))
        except ValueError:
            return None
    if len(nets) == 1 and nets[0] != NO_IPV4:
        net = nets[0]
        return LeaseKey(net) if isinstance(net, IPv4Network) else LeaseKey(None, net)
    if len(nets) == 2 and isinstance(nets[0], IPv4Network) and isinstance(nets[1], IPv6Network):
        return LeaseKey.of(nets[0], nets[1])
    return None


class _IP(click.ParamType):
    def __init__(self, version: int) -> None:
        self.version = version
        self.name = "IP" if version == 4 else "IPV6"

    def convert(self, value: Any, param: Any, ctx: Any) -> IPv4Address | IPv6Address:
        try:
            ip = ip_address(str(value).strip())
        except ValueError:
            ip = None
        if ip is None or ip.version != self.version:
            self.fail(f"{value!r} is not an IPv{self.version} address", param, ctx)
        return ip


@click.command("reserve")
@click.argument("subnet", type=_Subnet())
@click.option("--public-ip", type=_IP(4), help="The node that gets SUBNET (IPv4 networks).")
@click.option(
    "--public-ipv6",
    type=_IP(6),
    help="The node's public IPv6 address: identifies it in an IPv6-only network (optional "
    "in dual-stack).",
)
@etcd_options
def reserve_command(
    subnet: LeaseKey,
    public_ip: IPv4Address | None,
    public_ipv6: IPv6Address | None,
    etcd: EtcdOptions,
) -> None:
    """Reserve SUBNET for the node whose public IP is --public-ip (--public-ipv6 in an
    IPv6-only network).

    A reservation is a lease key without an etcd lease: it never expires, and
    the node with that public IP takes it when it (re)starts.  In a dual-stack
    network SUBNET names both halves, as Flannel keys them:
    10.244.3.0/24&fd44:0:0:3::/64 (or 10.244.3.0-24&fd44:0:0:3::-64); in an
    IPv6-only one the IPv6 subnet alone (stored as 0.0.0.0-0&fd44:0:0:3::-64).
    """
    from flannelish.subnet.lease import LeaseAttrs
    from flannelish.subnet.manager import SubnetManager

    with _registry(etcd) as registry:
        config = SubnetManager(registry).get_network_config(wait=False)
        assert config is not None
        _check_in_pool(subnet, config)
        if config.enable_ipv4 and public_ip is None:
            raise click.UsageError("--public-ip is required: the network has IPv4")
        if not config.enable_ipv4 and public_ipv6 is None:
            raise click.UsageError("--public-ipv6 is required: the network is IPv6-only")
        if not config.enable_ipv4 and public_ip is not None:
            raise click.UsageError("--public-ip has no meaning in an IPv6-only network")
        if not config.enable_ipv6 and public_ipv6 is not None:
            raise click.UsageError("--public-ipv6 has no meaning: the network has no IPv6")
        attrs = LeaseAttrs(public_ip or NO_IPV4.network_address, public_ipv6=public_ipv6)
        who = _who(attrs)
        leases, _ = registry.list_leases()
        current = next((x for x in leases if x.key == subnet), None)
        clash = next((x for x in leases if x.key != subnet and _overlaps(x.key, subnet)), None)
        if clash is not None:
            raise ConfigError(f"{subnet} overlaps {clash.key} of {_who(clash.attrs)}")
        if current is None:
            written = registry.create_lease(subnet, attrs, None)
        elif not _same_node(current.attrs, attrs, config):
            kind = "reserved for" if current.reserved else "leased by"
            raise ConfigError(
                f"{subnet} is already {kind} {_who(current.attrs)}",
                "unreserve it first" if current.reserved else "reserve it after that lease ends",
            )
        elif current.reserved:
            click.echo(f"{subnet} is already reserved for {who}")
            return
        else:  # the node's own live lease becomes permanent
            written = registry.replace_lease(current, current.attrs, None)
        if written is None:
            raise ConfigError(f"{subnet} changed while reserving it; run the command again")
        other = [x for x in leases if _same_node(x.attrs, attrs, config) and x.key != subnet]
    click.echo(f"reserved {subnet} for {who}")
    for lease in other:
        click.echo(
            f"note: {who} still holds {lease.key}; it moves to {subnet} when its daemon restarts",
            err=True,
        )


@click.command("unreserve")
@click.argument("subnet", type=_Subnet())
@etcd_options
def unreserve_command(subnet: LeaseKey, etcd: EtcdOptions) -> None:
    """Remove the reservation of SUBNET (live leases are left alone).

    An IPv4 subnet alone also finds its dual-stack reservation."""
    with _registry(etcd) as registry:
        current = registry.get_lease(subnet)
        if current is None:
            raise ConfigError(f"no reservation for {subnet} in etcd")
        if not current.reserved:
            raise ConfigError(
                f"{current.key} is a live lease of {_who(current.attrs)}, not a reservation",
                "it ends when that node stops renewing it",
            )
        if not registry.delete_lease(current):
            raise ConfigError(f"{subnet} changed while removing it; run the command again")
    click.echo(f"removed the reservation of {current.key} (was for {_who(current.attrs)})")


def _who(attrs: LeaseAttrs) -> str:
    """A node as its lease names it: PublicIP, or PublicIPv6 when IPv6-only (0.0.0.0)."""
    if attrs.public_ip.is_unspecified and attrs.public_ipv6 is not None:
        return str(attrs.public_ipv6)
    return str(attrs.public_ip)


def _same_node(theirs: LeaseAttrs, ours: LeaseAttrs, config: NetworkConfig) -> bool:
    """The daemon's rule (subnet/manager.py): PublicIP, or PublicIPv6 when IPv6-only."""
    if config.enable_ipv4:
        return theirs.public_ip == ours.public_ip
    return ours.public_ipv6 is not None and theirs.public_ipv6 == ours.public_ipv6


def _overlaps(a: LeaseKey, b: LeaseKey) -> bool:
    v4 = a.v4 is not None and b.v4 is not None and a.v4.overlaps(b.v4)
    return v4 or (a.v6 is not None and b.v6 is not None and a.v6.overlaps(b.v6))


def _check_in_pool(key: LeaseKey, config: NetworkConfig) -> None:
    """Each half in its pool, and exactly the families the network enables."""
    if config.enable_ipv4 and key.v4 is None:
        raise ConfigError(
            f"{key} has no IPv4 subnet, but the network has IPv4 ({config.network})",
            "name both halves: 10.244.3.0/24&fd44:0:0:3::/64" if config.enable_ipv6 else "",
        )
    if config.enable_ipv6 and key.v6 is None:
        raise ConfigError(
            f"{key} has no IPv6 subnet, but the network has IPv6 ({config.ipv6_network})",
            "name both halves: 10.244.3.0/24&fd44:0:0:3::/64"
            if config.enable_ipv4
            else "give the IPv6 subnet",
        )
    if key.v4 is not None and not config.enable_ipv4:
        raise ConfigError(f"{key} has an IPv4 subnet, but the network is IPv6-only")
    if key.v6 is not None and not config.enable_ipv6:
        raise ConfigError(f"{key} has an IPv6 subnet, but the network has no IPv6")
    if key.v4 is not None and not config.in_pool(key.v4):
        raise ConfigError(
            f"{key.v4} is not a subnet of the configured pool",
            f"expected a /{config.subnet_len} between {config.subnet_min} and "
            f"{config.subnet_max} in {config.network}",
        )
    if key.v6 is not None and not config.ipv6_in_pool(key.v6):
        raise ConfigError(
            f"{key.v6} is not an IPv6 subnet of the configured pool",
            f"expected a /{config.ipv6_subnet_len} between {config.ipv6_subnet_min} and "
            f"{config.ipv6_subnet_max} in {config.ipv6_network}",
        )


COMMANDS = [config_group, leases_command, reserve_command, unreserve_command]
