"""Which underlay addresses are on this node's L2 segment (shared by host-gw and VXLAN).

A peer's PublicIP is *on-link* when it lies inside a prefix configured on the
external interface: the kernel then reaches it directly (ARP on that
interface), with no gateway, so a plain route ``S via P dev <ext>`` works.
host-gw needs that for every peer; VXLAN DirectRouting uses it per peer to
choose between such a route and the tunnel.

The prefixes are the node's own view (its interface addresses), re-read by
:meth:`OnLink.refresh` on every base check, so readdressing the underlay
converges without a restart.  Flannel runs ``ip route get P`` per event
instead, and re-runs it on removal, so a topology change in between can make
it delete the wrong kind of entry; here the reconciler diffs the desired
state against the kernel, so nothing depends on how a peer was judged before.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from flannelish.kernel.netlink import AF_INET6

Prefix = IPv4Network | IPv6Network


def onlink_prefixes(netlink: Any, ifindex: int) -> list[Prefix]:
    """The IPv4 and global IPv6 prefixes configured on an interface: whose addresses
    are on its L2 (fe80::/64 is on every link and says nothing about a peer)."""
    addrs = list(netlink.addrs(ifindex)) + list(netlink.addrs(ifindex, AF_INET6))
    return [
        ip_network(f"{a.address}/{a.prefixlen}", strict=False)
        for a in addrs
        if not a.address.is_link_local
    ]


class OnLink:
    """The on-link prefixes of one interface, cached between refreshes."""

    def __init__(self, netlink: Any, ifindex: int) -> None:
        self._netlink = netlink
        self._ifindex = ifindex
        self.prefixes: list[Prefix] = []

    def refresh(self) -> list[Prefix]:
        self.prefixes = onlink_prefixes(self._netlink, self._ifindex)
        return self.prefixes

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, IPv4Address | IPv6Address):
            return False
        return any(ip in prefix for prefix in self.prefixes if prefix.version == ip.version)
