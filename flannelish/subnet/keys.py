"""The only place that knows etcd key paths (docs/flannel-compat.md §1).

``<prefix>/config`` holds the network config and ``<prefix>/subnets/<key>``
one lease per node, where ``<key>`` is ``10.5.34.0-24`` or, dual stack,
``10.5.34.0-24&fd00:0:0:22::-64``.  Keys are parsed with Flannel's pattern, but
matched against the whole key and only in the canonical form we (and
Flannel) write: ``10.5.34.0-024``, ``…-24\n`` or a non-canonical IPv6 part
would name a different etcd key than the one renewal or deletion rebuilds.
Anything else under ``subnets/`` is not a lease and is skipped (a bad lease)
by the callers.  Keys longer than MAX_KEY_LEN are refused before any regex
runs (Flannel's unanchored pattern costs quadratic time on a long run of
digits).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network

_SUBNET_KEY = re.compile(
    r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})-(\d{1,2})(?:&([a-f\d:]{2,39})-(\d{1,3}))?"
)
# "255.255.255.255-32&ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff-128" is 62 characters.
MAX_KEY_LEN = 64


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

    def lease(self, key: LeaseKey) -> str:
        """The etcd key of the lease identified by `key`."""
        return self.subnets + key.etcd

    def parse(self, key: str | bytes) -> tuple[IPv4Network, IPv6Network | None] | None:
        """The subnet(s) named by a lease key, or None if the key is not a lease key."""
        text = key.decode(errors="replace") if isinstance(key, bytes) else key
        if not text.startswith(self.subnets):
            return None
        return parse_subnet_key(text[len(self.subnets) :])


# The IPv4 half Flannel writes in the key of an IPv6-only lease ("0.0.0.0-0&fd00::-64").
NO_IPV4 = IPv4Network("0.0.0.0/0")


@dataclass(frozen=True, slots=True)
class LeaseKey:
    """The identity of a lease, and so of a peer: its IPv4 and/or IPv6 subnet.

    ``v4`` is None for an IPv6-only lease (whose etcd key carries Flannel's
    ``0.0.0.0-0`` placeholder), ``v6`` None for an IPv4-only one.  Everything
    that keys peers (watch, peer table, reconciler, admission) uses this, so no
    caller looks at the placeholder.
    """

    v4: IPv4Network | None
    v6: IPv6Network | None = None

    @classmethod
    def of(cls, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> LeaseKey:
        """From the two halves of a key as written in etcd (``0.0.0.0/0``: no IPv4)."""
        v4 = None if (subnet == NO_IPV4 and ipv6_subnet is not None) else subnet
        return cls(v4, ipv6_subnet)

    @property
    def subnet(self) -> IPv4Network:
        """The IPv4 half as etcd keys it (Flannel's ``0.0.0.0/0`` when IPv6-only)."""
        return self.v4 if self.v4 is not None else NO_IPV4

    @property
    def etcd(self) -> str:
        """The key under ``subnets/``: ``10.5.34.0-24``, ``…&fd00:0:0:22::-64``."""
        return subnet_key(self.subnet, self.v6)

    @property
    def order(self) -> tuple[int, int]:
        """A sort key: by IPv4 subnet, then IPv6 subnet."""
        return (
            int(self.v4.network_address) if self.v4 is not None else -1,
            int(self.v6.network_address) if self.v6 is not None else -1,
        )

    def __str__(self) -> str:
        return "&".join(str(x) for x in (self.v4, self.v6) if x is not None)


def within(inner: IPv4Network | IPv6Network, outer: IPv4Network | IPv6Network) -> bool:
    """``inner`` lies inside ``outer`` (same family), from address and prefix alone.

    ipaddress's ``subnet_of`` and ``overlaps`` cache ``broadcast_address`` and
    ``hostmask`` on the network objects they look at: an instance dict and two
    addresses, ~400 B on every peer's subnet held for the daemon's lifetime.
    """
    return (
        inner.version == outer.version
        and inner.prefixlen >= outer.prefixlen
        and int(inner.network_address) & int(outer.netmask) == int(outer.network_address)
    )


def overlap(a: IPv4Network | IPv6Network, b: IPv4Network | IPv6Network) -> bool:
    """Two networks share an address (CIDR blocks: then one holds the other); see within()."""
    return within(a, b) or within(b, a)


def as_key(subnet: IPv4Network | LeaseKey) -> LeaseKey:
    """A LeaseKey from either a key or (IPv4-only callers) an IPv4 subnet."""
    return subnet if isinstance(subnet, LeaseKey) else LeaseKey(subnet)


def parse_ipv4(text: str) -> IPv4Address:
    """A dotted-quad IPv4 address, as strictly as ``IPv4Address(text)``; ValueError if not one.

    Four times faster: every lease carries two IPv4 strings (its key and its
    PublicIP), and a 5000-node listing parses them all before the first route.
    inet_pton takes exactly four decimal octets (no leading zeros, no spaces,
    no shorthand), which is what ipaddress accepts.
    """
    return IPv4Address(_ipv4_int(text))


def _ipv4_int(text: str) -> int:
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError, TypeError):  # ValueError: an embedded NUL
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        # Flannel writes the canonical compressed lower-case form.
        key += f"&{ipv6_subnet.network_address.compressed}-{ipv6_subnet.prefixlen}"
    return key


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None] | None:
    """``10.5.34.0-24`` → (10.5.34.0/24, None); None if it is not a valid subnet key.

    Keys with host bits set (``10.5.34.1-24``) or in a non-canonical form
    (``10.5.34.0-024``, upper-case or uncompressed IPv6) are rejected rather
    than normalized: the key we would rebuild names a different etcd key, so
    renewing or deleting it would touch the wrong entry.  Never raises.
    """
    if len(key) > MAX_KEY_LEN:
        return None
    match = _SUBNET_KEY.fullmatch(key)
    if match is None:
        return None
    ip4, len4, ip6, len6 = match.groups()
    try:
        # (integer, prefix): no string parsed twice (an address object would be).
        v4 = IPv4Network((_ipv4_int(ip4), int(len4)))  # strict: no host bits
        v6 = IPv6Network(f"{ip6}/{len6}") if ip6 else None
    except ValueError:
        return None
    # Canonical only: the IPv4 address is (inet_pton refuses leading zeros); its
    # length and the IPv6 half are checked by writing the key back.
    if len4 != str(v4.prefixlen) or (v6 is not None and subnet_key(v4, v6) != key):
        return None
    return v4, v6
