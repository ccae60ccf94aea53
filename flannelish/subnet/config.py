"""The network config stored at ``<prefix>/config``, parsed as Flannel parses it.

Flannel decodes this JSON with Go's encoding/json, so field names match
case-insensitively, unknown fields are ignored and ``null`` leaves a field at
its default.  Defaults and validation follow docs/flannel-compat.md §2 rule by rule; each
violation is a ConfigError whose message names the field and the value.

Two deliberate differences from Flannel: SubnetMin > SubnetMax is rejected here
(Flannel only fails later with "out of subnets"), and a Backend section without
a Type is rejected here (Flannel fails later with "unknown backend type").

The Backend section stays a raw dict: each backend parses its own options.
Standard library only, because the CLI imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any

from flannelish.errors import ConfigError
from flannelish.subnet.jsonvalue import loads_bounded

DEFAULT_BACKEND_TYPE = "udp"  # Flannel's code (not its docs) when Backend is absent


@dataclass(frozen=True)
class _Family:
    """The per-family numbers of Flannel's rules (IPv4: /24, /30; IPv6: /64, /126)."""

    name: str  # "" for IPv4, "IPv6" for IPv6: prefixes the field names
    bits: int
    default_len: int
    max_len: int  # largest allowed SubnetLen
    min_network_prefix_for_default: int  # prefix <= this gets default_len

    def field(self, base: str) -> str:
        return f"{self.name}{base}"


_V4 = _Family("", 32, 24, 30, 22)
_V6 = _Family("IPv6", 128, 64, 126, 62)


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config with Flannel's defaults filled in."""

    network: IPv4Network | None
    subnet_len: int
    subnet_min: IPv4Address | None
    subnet_max: IPv4Address | None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None
    enable_nftables: bool = False
    backend_type: str = DEFAULT_BACKEND_TYPE
    backend: dict[str, Any] = field(default_factory=dict, compare=False)

    def subnet_candidates(self) -> Iterator[IPv4Network]:
        """Every IPv4 subnet between SubnetMin and SubnetMax, in order."""
        if self.network is None or self.subnet_min is None or self.subnet_max is None:
            return
        step = 1 << (32 - self.subnet_len)
        addr = int(self.subnet_min)
        while addr <= int(self.subnet_max):
            yield IPv4Network((addr, self.subnet_len))
            addr += step

    @property
    def subnet_count(self) -> int:
        """How many subnets the pool [SubnetMin, SubnetMax] holds."""
        if self.subnet_min is None or self.subnet_max is None:
            return 0
        step = 1 << (32 - self.subnet_len)
        return (int(self.subnet_max) - int(self.subnet_min)) // step + 1

    def in_pool(self, subnet: IPv4Network) -> bool:
        """True if `subnet` is one the allocator could hand out (Flannel's compatibility check)."""
        if self.subnet_min is None or self.subnet_max is None:
            return False
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    def ipv6_subnet_candidates(self) -> Iterator[IPv6Network]:
        """Every IPv6 subnet between IPv6SubnetMin and IPv6SubnetMax, in order (lazily)."""
        lo, hi, length = self.ipv6_subnet_min, self.ipv6_subnet_max, self.ipv6_subnet_len
        if self.ipv6_network is None or lo is None or hi is None:
            return
        step = 1 << (128 - length)
        for addr in range(int(lo), int(hi) + 1, step):
            yield IPv6Network((addr, length))

    @property
    def ipv6_subnet_count(self) -> int:
        if self.ipv6_subnet_min is None or self.ipv6_subnet_max is None:
            return 0
        step = 1 << (128 - self.ipv6_subnet_len)
        return (int(self.ipv6_subnet_max) - int(self.ipv6_subnet_min)) // step + 1

    def ipv6_in_pool(self, subnet: IPv6Network) -> bool:
        """The IPv6 counterpart of :meth:`in_pool`."""
        if self.ipv6_subnet_min is None or self.ipv6_subnet_max is None:
            return False
        return (
            subnet.prefixlen == self.ipv6_subnet_len
            and self.ipv6_subnet_min <= subnet.network_address <= self.ipv6_subnet_max
        )


def parse_network_config(raw: bytes | str) -> NetworkConfig:
    """Parse and validate the JSON text of ``<prefix>/config``; raises ConfigError only.

    The value is size-, depth- and number-checked before decoding
    (flannelish.subnet.jsonvalue: 64 KiB, 32 levels).
    """
    try:
        doc = loads_bounded(raw)
    except ValueError as exc:
        raise ConfigError("network config is not valid JSON", _short(exc)) from None
    if not isinstance(doc, dict):
        raise ConfigError(
            "network config must be a JSON object", f"got {type(doc).__name__} {_show(doc)}"
        )
    fields = _fold_keys(doc)

    enable_ipv4 = _get_bool(fields, "EnableIPv4", default=True)
    enable_ipv6 = _get_bool(fields, "EnableIPv6", default=False)
    enable_nftables = _get_bool(fields, "EnableNFTables", default=False)
    if not enable_ipv4 and not enable_ipv6:
        raise ConfigError(
            "EnableIPv4 and EnableIPv6 are both false: no IP stack is defined in the network config"
        )

    network: IPv4Network | None = None
    subnet_len = 0
    subnet_min = subnet_max = None
    if enable_ipv4:
        network, subnet_len, subnet_min, subnet_max = _parse_family(fields, _V4)
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len = 0
    ipv6_min = ipv6_max = None
    if enable_ipv6:
        ipv6_network, ipv6_subnet_len, ipv6_min, ipv6_max = _parse_family(fields, _V6)

    backend_type, backend = _parse_backend(fields)
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
        ipv6_network=ipv6_network,
        ipv6_subnet_len=ipv6_subnet_len,
        ipv6_subnet_min=ipv6_min,
        ipv6_subnet_max=ipv6_max,
        enable_nftables=enable_nftables,
        backend_type=backend_type,
        backend=backend,
    )


def _parse_family(fields: dict[str, Any], fam: _Family) -> tuple[Any, int, Any, Any]:
    """Network, SubnetLen, SubnetMin, SubnetMax of one family, defaults applied."""
    net_field = fam.field("Network")
    value = fields.get(net_field.lower())
    if value is None or value == "":
        raise ConfigError(
            f"please define a correct {net_field} parameter in the network config",
            f"{net_field} is missing",
        )
    network = _parse_network(net_field, value, fam)

    len_field = fam.field("SubnetLen")
    subnet_len = _get_int(fields, len_field)
    prefix = network.prefixlen
    if subnet_len:
        if subnet_len < 0 or subnet_len > fam.max_len:
            raise ConfigError(
                f"{len_field} must be less than /{fam.max_len + 1}", f"{len_field}={subnet_len}"
            )
        if subnet_len < prefix + 2:
            raise ConfigError(
                f"{net_field} must be able to accommodate at least four subnets",
                f"{len_field}={subnet_len} with {net_field}={network} needs {len_field} >= "
                f"{prefix + 2}",
            )
    elif prefix > fam.max_len - 2:
        raise ConfigError(
            f"{net_field} is too small. Minimum useful network prefix is /{fam.max_len - 2}",
            f"{net_field}={network}",
        )
    elif prefix <= fam.min_network_prefix_for_default:
        subnet_len = fam.default_len
    else:
        subnet_len = prefix + 2

    size = 1 << (fam.bits - subnet_len)
    net_int = int(network.network_address)
    bounds = []
    for base, default in (
        ("SubnetMin", net_int + size),  # Flannel never uses the first subnet
        ("SubnetMax", net_int + network.num_addresses - size),  # the last subnet
    ):
        name = fam.field(base)
        raw_addr = fields.get(name.lower())
        if raw_addr is None or raw_addr == "":
            addr = network.network_address.__class__(default)
        else:
            addr = _parse_address(name, raw_addr, fam)
            if addr not in network:
                raise ConfigError(
                    f"{name} is not in the range of the {net_field}",
                    f"{name}={addr}, {net_field}={network}",
                )
            if int(addr) % size:
                raise ConfigError(
                    f"{name} is not on a {len_field} boundary: {addr}",
                    f"{len_field}={subnet_len}",
                )
        bounds.append(addr)
    lo, hi = bounds
    if lo > hi:
        raise ConfigError(
            f"{fam.field('SubnetMin')} is greater than {fam.field('SubnetMax')}",
            f"{lo} > {hi}",
        )
    return network, subnet_len, lo, hi


def _parse_backend(fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    backend = fields.get("backend")
    if backend is None:
        return DEFAULT_BACKEND_TYPE, {}
    if not isinstance(backend, dict):
        raise ConfigError("Backend must be a JSON object", f"Backend={_show(backend)}")
    btype = _fold_keys(backend).get("type")
    if not isinstance(btype, str) or not btype.strip():
        raise ConfigError(
            'Backend.Type must be a non-empty string such as "vxlan"',
            f"Backend.Type={_show(btype)}",
        )
    return btype.strip().lower(), dict(backend)


def _fold_keys(doc: dict[str, Any]) -> dict[str, Any]:
    # Go's decoder matches keys case-insensitively; a later duplicate wins.
    return {str(k).lower(): v for k, v in doc.items()}


def _parse_network(name: str, value: Any, fam: _Family) -> Any:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a CIDR string", f"{name}={_show(value)}")
    try:
        net = ip_network(value.strip(), strict=False)  # host bits are masked, as in Flannel
    except ValueError:
        raise ConfigError(
            f"please define a correct {name} parameter in the network config",
            f"{name}={_show(value)} is not a CIDR",
        ) from None
    if net.version != (4 if fam is _V4 else 6):
        raise ConfigError(
            f"{name} must be an IPv{4 if fam is _V4 else 6} CIDR", f"{name}={_show(value)}"
        )
    if "/" not in value:
        raise ConfigError(f"{name} must be a CIDR with a prefix length", f"{name}={_show(value)}")
    if int(net.network_address) == 0 and net.prefixlen == 0:
        raise ConfigError(
            f"please define a correct {name} parameter in the network config",
            f"{name}={_show(value)}",
        )
    return net


def _parse_address(name: str, value: Any, fam: _Family) -> Any:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be an address string", f"{name}={_show(value)}")
    try:
        addr = ip_address(value.strip())
    except ValueError:
        raise ConfigError(f"{name} is not an IP address", f"{name}={_show(value)}") from None
    if addr.version != (4 if fam is _V4 else 6):
        raise ConfigError(
            f"{name} must be an IPv{4 if fam is _V4 else 6} address", f"{name}={_show(value)}"
        )
    return addr


def _get_bool(fields: dict[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name.lower())
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false", f"{name}={_show(value)}")
    return value


def _get_int(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name.lower())
    if value is None:
        return 0
    # bool is an int subclass in Python, not in Go's decoder.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer", f"{name}={_show(value)}")
    return value


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _short(exc: BaseException) -> str:
    return str(exc)[:120]
