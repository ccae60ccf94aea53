"""The only place that knows etcd key paths (docs/flannel-compat.md §1).

``<prefix>/config`` holds the network config and ``<prefix>/subnets/<key>``
one lease per node, where ``<key>`` is ``10.5.34.0-24`` or, dual stack,
``10.5.34.0-24&fd00:0:0:22::-64``.  Keys are parsed with a pattern anchored at
the end, as Flannel does; anything else under ``subnets/`` is not a lease and
is skipped by the callers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

_SUBNET_KEY = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


@dataclass(frozen=True)
class Keys:
    """Key paths under one prefix (already normalized, e.g. ``/coreos.com/network``)."""

    prefix: str

    @property
    def config(self) -> str:
        return f"{self.prefix}/config"

    @property
    def subnets(self) -> str:
        """Prefix of every lease key, with the trailing slash."""
        return f"{self.prefix}/subnets/"

    def subnet(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
        return self.subnets + subnet_key(subnet, ipv6_subnet)

    def parse(self, key: str | bytes) -> tuple[IPv4Network, IPv6Network | None] | None:
        """The subnet(s) named by a lease key, or None if the key is not a lease key."""
        text = key.decode(errors="replace") if isinstance(key, bytes) else key
        if not text.startswith(self.subnets):
            return None
        return parse_subnet_key(text[len(self.subnets) :])


def subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        # Flannel writes the canonical compressed lower-case form.
        key += f"&{ipv6_subnet.network_address.compressed}-{ipv6_subnet.prefixlen}"
    return key


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None] | None:
    """``10.5.34.0-24`` → (10.5.34.0/24, None); None if it is not a valid subnet key.

    Keys with host bits set (``10.5.34.1-24``) are rejected rather than
    masked: the key we would rebuild from the masked subnet names a different
    etcd key, so renewing or deleting it would touch the wrong entry.
    """
    match = _SUBNET_KEY.search(key)
    if match is None or match.start() != 0:
        return None
    ip4, len4, ip6, len6 = match.groups()
    try:
        v4 = IPv4Network(f"{ip4}/{len4}")
        v6 = IPv6Network(f"{ip6}/{len6}") if ip6 else None
    except ValueError:
        return None
    return v4, v6
