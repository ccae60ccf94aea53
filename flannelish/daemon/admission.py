"""Which peer leases may touch this node's kernel at all.

Any node can write any key under the prefix, so a lease is outside input: a
buggy or hostile node (or one corrupted value) must not be able to route the
internet, the underlay or another node's pods through us.  A peer is admitted
only if

* its subnet has exactly the network's SubnetLen and lies inside Network
  (so two distinct peer subnets can never overlap each other: equal length,
  aligned, different keys), and does not overlap our own lease;
* its PublicIP is a unicast address that is neither ours nor inside the pod
  network;
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
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from flannelish.kernel.resources import Skip
from flannelish.subnet.lease import Lease


@dataclass(frozen=True)
class AdmissionRules:
    """What a peer lease is checked against (from the network config and our node)."""

    network: IPv4Network
    subnet_len: int
    own_ips: frozenset[IPv4Address | IPv6Address]
    own_subnet: Callable[[], IPv4Network | None]
    validate: Callable[[Lease], Skip | None] = lambda _peer: None
    claims: Callable[[Lease], Sequence[Hashable]] = lambda _peer: ()


def check_lease(peer: Lease, rules: AdmissionRules) -> Skip | None:
    """The reason this lease must not be programmed, or None."""
    subnet = peer.subnet
    if subnet.prefixlen != rules.subnet_len:
        return Skip(
            f"subnet {subnet} is not a /{rules.subnet_len} (the network's SubnetLen)",
            "subnet-length",
        )
    if not subnet.subnet_of(rules.network):
        return Skip(f"subnet {subnet} lies outside the network {rules.network}", "outside-network")
    own = rules.own_subnet()
    if own is not None and subnet.overlaps(own):
        return Skip(f"subnet {subnet} overlaps our own lease {own}", "overlap")
    why = public_ip_problem(peer.attrs.public_ip, rules)
    if why is not None:
        return Skip(f"PublicIP {peer.attrs.public_ip} {why}", "public-ip")
    return rules.validate(peer)


def public_ip_problem(ip: IPv4Address, rules: AdmissionRules) -> str | None:
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
        return "is not a unicast host address"
    if ip in rules.network:
        return f"lies inside the pod network {rules.network}"
    if ip in rules.own_ips:
        return "is our own"
    return None
