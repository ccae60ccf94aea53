"""Choosing the external (underlay) interface and the public IPs, as flanneld does.

Order (docs/flannel-compat.md §10): every ``--iface`` (a name, an IPv4 or an
IPv6 address) in turn, then every ``--iface-regex`` (matched against addresses
of both families first, then names), then ``--iface-can-reach`` (the interface
and source address of the kernel's route to that address, as ``ip route get``
shows them); the first match wins.  Without those flags: the interface holding
``--public-ip`` (or ``--public-ipv6``) if given, else the one of the default
route.  The public IPs are ``--public-ip`` / ``--public-ipv6`` or the chosen
interface's first global address of each family.  An IPv6-only network needs
no IPv4 address (the lease then carries Flannel's ``PublicIP 0.0.0.0``); an
IPv6 network needs an IPv6 one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from flannelish.backends.base import ExternalInterface
from flannelish.errors import ConfigError, NotAvailableError
from flannelish.kernel.netlink import AF_INET6, Link, Netlink

Address = IPv4Address | IPv6Address


def _as_ip(value: str) -> Address | None:
    try:
        return ip_address(value)
    except ValueError:
        return None


def _all(nl: Netlink, index: int | None = None) -> list[tuple[int, Address]]:
    """(ifindex, address) of every IPv4, then every IPv6 address."""
    return [(a.index, a.address) for a in nl.addrs(index) + nl.addrs(index, AF_INET6)]


def _first_address(nl: Netlink, link: Link) -> IPv4Address | None:
    addrs = [a for _index, a in _all(nl, link.index) if isinstance(a, IPv4Address)]
    # Global addresses first (Flannel orders global before link-local).
    addrs.sort(key=lambda a: (a.is_link_local, a.is_loopback))
    return addrs[0] if addrs else None


def _first_address6(nl: Netlink, link: Link) -> IPv6Address | None:
    """The first global IPv6 address: a link-local one cannot carry the tunnel."""
    addrs = [
        a
        for _index, a in _all(nl, link.index)
        if isinstance(a, IPv6Address) and not (a.is_link_local or a.is_loopback)
    ]
    return addrs[0] if addrs else None


def _holder(nl: Netlink, links: Sequence[Link], ip: Address) -> Link | None:
    indexes = {index for index, address in _all(nl) if address == ip}
    return next((link for link in links if link.index in indexes), None)


def _match(
    nl: Netlink, links: Sequence[Link], ifaces: Sequence[str], regexes: Sequence[str]
) -> tuple[Link, Address | None] | None:
    for spec in ifaces:
        ip = _as_ip(spec)
        if ip is not None:
            link = _holder(nl, links, ip)
            if link is not None:
                return link, ip
        else:
            link = next((x for x in links if x.name == spec), None)
            if link is not None:
                return link, None
    for pattern in regexes:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--iface-regex {pattern!r} is not a valid regex", str(exc)) from None
        for index, address in _all(nl):
            if rx.search(str(address)):
                link = next((x for x in links if x.index == index), None)
                if link is not None:
                    return link, address
        for link in links:
            if rx.search(link.name):
                return link, None
    return None


def _can_reach(nl: Netlink, links: Sequence[Link], target: str) -> tuple[Link, Address | None]:
    """The interface and source address of the kernel's route to `target` (IPv4 or
    IPv6, `ip route get`); the source is of the target's family."""
    ip = _as_ip(target)
    if ip is None:
        raise ConfigError("--iface-can-reach must be an IPv4 or IPv6 address", repr(target))
    found = nl.route_lookup(ip)
    link = next((x for x in links if found is not None and x.index == found[0]), None)
    if found is None or link is None:
        raise ConfigError(f"no route to --iface-can-reach {target}", "check `ip route get`")
    source = found[1]
    if isinstance(source, IPv6Address) and (source.is_link_local or source.is_loopback):
        source = None  # cannot carry the tunnel: the interface's global address instead
    return link, source


def select_interface(
    nl: Netlink,
    ifaces: Sequence[str] = (),
    regexes: Sequence[str] = (),
    public_ip: str | None = None,
    can_reach: str | None = None,
    public_ipv6: str | None = None,
    ipv4: bool = True,
    ipv6: bool = False,
) -> ExternalInterface:
    """The underlay interface; `ipv4`/`ipv6`: the families the network enables
    (each needs an address of its family on the interface or a --public-ip*)."""
    public = _parse_public(public_ip, "--public-ip", IPv4Address)
    public6 = _parse_public(public_ipv6, "--public-ipv6", IPv6Address)
    links = nl.links()
    found_ip: Address | None = None
    if ifaces or regexes or can_reach:
        found = _match(nl, links, ifaces, regexes)
        if found is None and can_reach:
            found = _can_reach(nl, links, can_reach)
        if found is None:
            asked = ", ".join(
                [*(f"--iface {i}" for i in ifaces), *(f"--iface-regex {r}" for r in regexes)]
            )
            raise ConfigError("no interface matches", asked)
        link, found_ip = found
    elif public is not None or public6 is not None:
        wanted: Address = public if public is not None else public6
        holder = _holder(nl, links, wanted)
        if holder is None:
            flag = "--public-ip" if public is not None else "--public-ipv6"
            raise ConfigError(
                f"no interface holds {flag} {wanted}",
                "behind NAT, also pass --iface to name the underlay interface",
            )
        link, found_ip = holder, wanted
    else:
        oif = nl.default_route_oif()
        if oif is None and not ipv4:
            oif = nl.default_route_oif(AF_INET6)
        link_or_none = next((x for x in links if x.index == oif), None)
        if link_or_none is None:
            raise NotAvailableError(
                "no default route to pick the underlay interface from", "pass --iface"
            )
        link = link_or_none
    address = found_ip if isinstance(found_ip, IPv4Address) else _first_address(nl, link)
    address6 = found_ip if isinstance(found_ip, IPv6Address) else _first_address6(nl, link)
    if address is None and ipv4:
        raise ConfigError(f"interface {link.name} has no IPv4 address")
    if address6 is None and public6 is None and ipv6:
        raise ConfigError(
            f"interface {link.name} has no global IPv6 address",
            "the network enables IPv6: give the interface one, or pass --public-ipv6",
        )
    if link.mtu <= 0:
        raise ConfigError(f"interface {link.name} reports MTU {link.mtu}")
    v4 = address or NO_ADDRESS
    return ExternalInterface(
        link.name,
        link.index,
        v4,
        (public or v4) if ipv4 else NO_ADDRESS,
        link.mtu,
        address6 if ipv6 else None,
        (public6 or address6) if ipv6 else None,
    )


# What an IPv6-only node advertises as PublicIP, as flanneld does.
NO_ADDRESS = IPv4Address("0.0.0.0")


def _parse_public(value: str | None, flag: str, kind: type[Address]) -> Any:
    if not value:
        return None
    ip = _as_ip(value)
    if not isinstance(ip, kind):
        family = "an IPv4" if kind is IPv4Address else "an IPv6"
        raise ConfigError(f"{flag} must be {family} address", repr(value))
    return ip
