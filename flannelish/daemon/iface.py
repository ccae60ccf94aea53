"""Choosing the external (underlay) interface and the public IP, as flanneld does.

Order (docs/flannel-compat.md §10): every ``--iface`` (a name or an IPv4 address) in turn,
then every ``--iface-regex`` (matched against addresses first, then names),
then ``--iface-can-reach`` (the interface and source address of the kernel's
route to that address, as ``ip route get`` shows them); the first match wins.
Without those flags: the interface holding ``--public-ip`` if given, else
the one of the default route.  The public IP
is ``--public-ip`` or the chosen interface's first IPv4 address.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, ip_address

from flannelish.backends.base import ExternalInterface
from flannelish.errors import ConfigError, NotAvailableError
from flannelish.kernel.netlink import Addr, Link, Netlink


def is_ipv4(value: str) -> bool:
    try:
        return ip_address(value).version == 4
    except ValueError:
        return False


def _v4(addrs: list[Addr]) -> list[tuple[int, IPv4Address]]:
    """(ifindex, address) of the IPv4 addresses among `addrs`."""
    return [(a.index, a.address) for a in addrs if isinstance(a.address, IPv4Address)]


def _first_address(nl: Netlink, link: Link) -> IPv4Address | None:
    addrs = [address for _index, address in _v4(nl.addrs(link.index))]
    # Global addresses first (Flannel orders global before link-local).
    addrs.sort(key=lambda a: (a.is_link_local, a.is_loopback))
    return addrs[0] if addrs else None


def _holder(nl: Netlink, links: Sequence[Link], ip: IPv4Address) -> Link | None:
    indexes = {index for index, address in _v4(nl.addrs()) if address == ip}
    return next((link for link in links if link.index in indexes), None)


def _match(
    nl: Netlink, links: Sequence[Link], ifaces: Sequence[str], regexes: Sequence[str]
) -> tuple[Link, IPv4Address | None] | None:
    for spec in ifaces:
        if is_ipv4(spec):
            link = _holder(nl, links, IPv4Address(spec))
            if link is not None:
                return link, IPv4Address(spec)
        else:
            link = next((x for x in links if x.name == spec), None)
            if link is not None:
                return link, None
    for pattern in regexes:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--iface-regex {pattern!r} is not a valid regex", str(exc)) from None
        for index, address in _v4(nl.addrs()):
            if rx.search(str(address)):
                link = next((x for x in links if x.index == index), None)
                if link is not None:
                    return link, address
        for link in links:
            if rx.search(link.name):
                return link, None
    return None


def _can_reach(nl: Netlink, links: Sequence[Link], target: str) -> tuple[Link, IPv4Address | None]:
    if not is_ipv4(target):
        raise ConfigError("--iface-can-reach must be an IPv4 address", repr(target))
    found = nl.route_lookup(IPv4Address(target))
    link = next((x for x in links if found is not None and x.index == found[0]), None)
    if found is None or link is None:
        raise ConfigError(f"no route to --iface-can-reach {target}", "check `ip route get`")
    return link, found[1]


def select_interface(
    nl: Netlink,
    ifaces: Sequence[str] = (),
    regexes: Sequence[str] = (),
    public_ip: str | None = None,
    can_reach: str | None = None,
) -> ExternalInterface:
    public: IPv4Address | None = None
    if public_ip:
        if not is_ipv4(public_ip):
            raise ConfigError("--public-ip must be an IPv4 address", repr(public_ip))
        public = IPv4Address(public_ip)
    links = nl.links()
    address: IPv4Address | None = None
    if ifaces or regexes or can_reach:
        found = _match(nl, links, ifaces, regexes)
        if found is None and can_reach:
            found = _can_reach(nl, links, can_reach)
        if found is None:
            asked = ", ".join(
                [*(f"--iface {i}" for i in ifaces), *(f"--iface-regex {r}" for r in regexes)]
            )
            raise ConfigError("no interface matches", asked)
        link, address = found
    elif public is not None:
        holder = _holder(nl, links, public)
        if holder is None:
            raise ConfigError(
                f"no interface holds --public-ip {public}",
                "behind NAT, also pass --iface to name the underlay interface",
            )
        link, address = holder, public
    else:
        oif = nl.default_route_oif()
        link_or_none = next((x for x in links if x.index == oif), None)
        if link_or_none is None:
            raise NotAvailableError(
                "no default route to pick the underlay interface from", "pass --iface"
            )
        link = link_or_none
    if address is None:
        address = _first_address(nl, link)
    if address is None:
        raise ConfigError(f"interface {link.name} has no IPv4 address")
    if link.mtu <= 0:
        raise ConfigError(f"interface {link.name} reports MTU {link.mtu}")
    return ExternalInterface(link.name, link.index, address, public or address, link.mtu)
