"""Which peer leases may touch this node's kernel at all.

Any node can write any key under the prefix, so a lease is outside input: a
buggy or hostile node (or one corrupted value) must not be able to route the
internet, the underlay or another node's pods through us.  A peer is admitted
only if

* it carries exactly the enabled families (an IPv4 and/or an IPv6 subnet);
* per family, its subnet has exactly the network's (IPv6)SubnetLen and lies
  inside (IPv6)Network (so two distinct peer subnets can never overlap each
  other: equal length, aligned, different keys), and does not overlap our own
  lease;
* per family, its PublicIP / PublicIPv6 is a unicast address that is neither
  ours nor inside the pod network;
* the backend accepts its data (:meth:`Backend.validate`: backend type, VTEP
  MAC, ...), and it claims nothing another admitted peer already holds
  (:meth:`Backend.claims`, e.g. a VTEP MAC: two peers with one MAC would
  share one FDB entry).  The peer that held the claim first keeps it; the
  other is admitted once the holder is gone.

Upstream Flannel checks none of this (see docs/flannel-compat.md §12, "Bugs
we fix").  Everything here is per lease, O(1): the checks run on every watch
event without looking at the other peers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannelish.kernel.resources import Skip
from flannelish.subnet.keys import LeaseKey, overlap, within
from flannelish.subnet.lease import Lease

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class AdmissionRules:
    """What a peer lease is checked against (from the network config and our node).

    ``network`` is None in an IPv6-only network, ``ipv6_network`` None unless
    IPv6 is enabled: a peer's key must carry exactly the enabled families.
    """

    network: IPv4Network | None
    subnet_len: int
    own_ips: frozenset[IPv4Address | IPv6Address]
    own_subnet: Callable[[], LeaseKey | None]
    validate: Callable[[Lease], Skip | None] = lambda _peer: None
    claims: Callable[[Lease], Sequence[Hashable]] = lambda _peer: ()
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 0


def check_lease(peer: Lease, rules: AdmissionRules) -> Skip | None:
    """The reason this lease must not be programmed, or None."""
    key, own = peer.key, rules.own_subnet()
    for family, subnet, network, length, mine in (
        ("IPv4", key.v4, rules.network, rules.subnet_len, own.v4 if own else None),
        ("IPv6", key.v6, rules.ipv6_network, rules.ipv6_subnet_len, own.v6 if own else None),
    ):
        if (subnet is None) != (network is None):
            has = "has no" if subnet is None else "has an"
            state = "enabled" if network is not None else "not enabled"
            return Skip(f"lease {key} {has} {family} subnet; {family} is {state}", "family")
        if subnet is None or network is None:
            continue
        skip = _subnet_problem(subnet, network, length, mine)
        if skip is not None:
            return skip
    if rules.network is not None:
        why = public_ip_problem(peer.attrs.public_ip, rules)
        if why is not None:
            return Skip(f"PublicIP {peer.attrs.public_ip} {why}", "public-ip")
    if rules.ipv6_network is not None:
        v6 = peer.attrs.public_ipv6
        why = "is missing" if v6 is None else public_ip_problem(v6, rules)
        if why is not None:
            return Skip(f"PublicIPv6 {v6} {why}", "public-ip")
    return rules.validate(peer)


def _subnet_problem(
    subnet: Network, network: Network, length: int, own: Network | None
) -> Skip | None:
    if subnet.prefixlen != length:
        field = "SubnetLen" if subnet.version == 4 else "IPv6SubnetLen"
        return Skip(f"subnet {subnet} is not a /{length} (the network's {field})", "subnet-length")
    if not within(subnet, network):
        return Skip(f"subnet {subnet} lies outside the network {network}", "outside-network")
    if own is not None and overlap(subnet, own):
        return Skip(f"subnet {subnet} overlaps our own lease {own}", "overlap")
    return None


def public_ip_problem(ip: Address, rules: AdmissionRules) -> str | None:
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
        return "is not a unicast host address"
    if isinstance(ip, IPv6Address) and ip.is_link_local:
        return "is link-local (no route to it off the link)"
    network = rules.network if ip.version == 4 else rules.ipv6_network
    if network is not None and ip in network:
        return f"lies inside the pod network {network}"
    if ip in rules.own_ips:
        return "is our own"
    return None
