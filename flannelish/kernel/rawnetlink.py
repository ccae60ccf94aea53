"""RawNetlink: the one runtime implementation of :class:`~flannelish.kernel.netlink.Netlink`.

Each operation packs its rtnetlink request from a record (the wire format is
:mod:`flannelish.kernel.rtnl`) and decodes replies back into records.  One
instance is one socket in one network namespace; the daemon shares its
instance between threads (the socket serialises requests), the CNI plugin
opens one per namespace per call.  Standard library only: the CNI plugin
imports this on every call.

It is longer than the usual ~450 lines because it is one class: every method
of the Netlink interface, each a request packer and a reply decoder; splitting
the class by object kind would scatter the shared socket handling.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any

from flannelish.errors import KernelError
from flannelish.kernel import rtnl
from flannelish.kernel.netlink import (
    AF_INET,
    AF_INET6,
    BLACKHOLE_METRIC,
    MAIN_TABLE,
    ROUTE_PROTO,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    Addr,
    Fdb,
    IPAddress,
    IPNetwork,
    Link,
    Neigh,
    Netlink,
    Nexthop,
    NexthopExists,
    Op,
    Route,
    RouteExists,
    Tick,
    VxlanInfo,
    VxlanSpec,
    nexthop_id,
    route_nexthop,
)
from flannelish.kernel.netns import in_netns
from flannelish.kernel.rtnl import (
    AF_BRIDGE,
    NDA_LLADDR,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    LinkMsg,
    RtnlSocket,
    attr,
    ifinfo,
    mac_bytes,
    mac_str,
    nested,
    string,
    u32,
)

CREATE = NLM_F_CREATE | NLM_F_EXCL  # fail with EEXIST if the slot is taken
REPLACE = NLM_F_CREATE | NLM_F_REPLACE  # create or overwrite
_GONE = (errno.ENODEV, errno.ENOENT)  # what a lookup of a missing link returns


AF_UNSPEC = 0  # a neighbour dump of both the ARP and the ND table
_MISSING = (errno.ENOENT, errno.ESRCH, errno.ENODEV)  # "already gone" (rtnl.is_missing)
# One write's request: message type, body, flags, and for errors the operation's
# name and what it was for ("route add", "10.1.0.0/26 via 10.1.0.0").
_Write = tuple[int, bytes, int, str, object]


def _nothing() -> None:
    pass


def _through_ours(m: rtnl.RouteMsg, dst: IPNetwork) -> bool:
    """Whether a dumped route goes through the nexthop object ``Route.nexthop`` names."""
    nhid = m.u32(rtnl.RTA_NH_ID)
    return bool(nhid) and nhid == nexthop_id(dst)


def _address(raw: bytes) -> IPAddress:
    return IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw)


class RawNetlink:
    """The real kernel through hand-packed rtnetlink messages.

    `netns` is where the socket lives: None (the calling thread's namespace;
    the daemon runs inside its node's namespace), a name under /run/netns
    (tests, benchmarks) or an open namespace fd, which the caller keeps open
    while this object is used (the CNI plugin's host and pod namespaces).
    """

    def __init__(self, netns: str | int | None = None) -> None:
        self._netns = netns
        with in_netns(netns):
            self._rtnl = RtnlSocket()

    def close(self) -> None:
        self._rtnl.close()

    def __enter__(self) -> RawNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _raw(self, op: str, what: object, missing_ok: bool = False) -> Iterator[None]:
        """Kernel refusals in the block become KernelError (with the errno)."""
        try:
            yield
        except OSError as exc:
            if missing_ok and rtnl.is_missing(exc):
                return  # already gone: what a delete wanted
            raise KernelError(
                f"netlink {op} failed for {what}", exc.strerror or str(exc), exc.errno
            ) from None

    # -- links ----------------------------------------------------------------------
    @staticmethod
    def _to_link(msg: LinkMsg) -> Link:
        kind, data = msg.linkinfo()
        vxlan = None
        if kind == "vxlan":
            local = data.get(rtnl.IFLA_VXLAN_LOCAL) or data.get(rtnl.IFLA_VXLAN_LOCAL6)
            link = data.get(rtnl.IFLA_VXLAN_LINK)
            port = data.get(rtnl.IFLA_VXLAN_PORT)
            vni = data.get(rtnl.IFLA_VXLAN_ID)
            vxlan = VxlanInfo(
                vni=struct.unpack("=I", vni)[0] if vni else 0,
                local=_address(local) if local and len(local) in (4, 16) else None,
                link=struct.unpack("=I", link)[0] if link else None,
                port=struct.unpack("!H", port)[0] if port else 0,  # network byte order
                learning=bool(data.get(rtnl.IFLA_VXLAN_LEARNING, b"\0")[0]),
            )
        return Link(
            index=msg.index,
            name=msg.name,
            kind=kind,
            mac=mac_str(msg.attrs.get(rtnl.IFLA_ADDRESS, b"")),
            mtu=msg.mtu,
            up=bool(msg.flags & rtnl.IFF_UP),
            vxlan=vxlan,
            master=msg.u32(rtnl.IFLA_MASTER),
            promisc=bool(msg.flags & rtnl.IFF_PROMISC),
            peer_index=msg.u32(rtnl.IFLA_LINK),
        )

    def links(self) -> list[Link]:
        body = ifinfo() + u32(rtnl.IFLA_EXT_MASK, rtnl.RTEXT_FILTER_SKIP_STATS)
        with self._raw("link dump", "all links"):
            replies = self._rtnl.dump(rtnl.RTM_GETLINK, body)
        return [self._to_link(m) for m in rtnl.link_msgs(replies)]

    def _get_link(self, what: str, body: bytes) -> Link | None:
        body = body + u32(rtnl.IFLA_EXT_MASK, rtnl.RTEXT_FILTER_SKIP_STATS)
        try:
            replies = self._rtnl.get(rtnl.RTM_GETLINK, body)
        except OSError as exc:
            if exc.errno in _GONE:
                return None
            raise KernelError(
                f"netlink link get failed for {what}", exc.strerror, exc.errno
            ) from None
        return next((self._to_link(m) for m in rtnl.link_msgs(replies)), None)

    def link(self, name: str) -> Link | None:
        return self._get_link(name, ifinfo() + string(rtnl.IFLA_IFNAME, name))

    def link_by_index(self, index: int) -> Link | None:
        if index <= 0:  # e.g. IFLA_LINK of a link without a peer
            return None
        return self._get_link(f"ifindex {index}", ifinfo(index))

    def _create(self, what: str, name: str, attrs: bytes) -> Link:
        with self._raw(f"{what} add", name):
            self._rtnl.request(rtnl.RTM_NEWLINK, ifinfo() + attrs, CREATE)
        link = self.link(name)
        if link is None:
            raise KernelError(f"{what} device {name} vanished right after creation")
        return link

    def create_vxlan(self, spec: VxlanSpec) -> Link:
        data = nested(
            rtnl.IFLA_INFO_DATA,
            u32(rtnl.IFLA_VXLAN_ID, spec.vni),
            u32(rtnl.IFLA_VXLAN_LINK, spec.link),
            attr(
                rtnl.IFLA_VXLAN_LOCAL6 if spec.local.version == 6 else rtnl.IFLA_VXLAN_LOCAL,
                spec.local.packed,
            ),
            attr(rtnl.IFLA_VXLAN_LEARNING, bytes([int(spec.learning)])),
            attr(rtnl.IFLA_VXLAN_PORT, struct.pack("!H", spec.port)),  # network byte order
            attr(rtnl.IFLA_VXLAN_GBP, b"") if spec.gbp else b"",
        )
        attrs = (
            string(rtnl.IFLA_IFNAME, spec.name)
            + attr(rtnl.IFLA_ADDRESS, mac_bytes(spec.mac))
            + u32(rtnl.IFLA_MTU, spec.mtu)
            + nested(rtnl.IFLA_LINKINFO, string(rtnl.IFLA_INFO_KIND, "vxlan"), data)
        )
        return self._create("vxlan", spec.name, attrs)

    def create_bridge(self, name: str, mtu: int, mac: str) -> Link:
        data = nested(
            rtnl.IFLA_INFO_DATA,
            u32(rtnl.IFLA_BR_STP_STATE, 0),
            u32(rtnl.IFLA_BR_FORWARD_DELAY, 1500),  # centiseconds, as the reference plugin
            u32(rtnl.IFLA_BR_AGEING_TIME, 30000),
        )
        attrs = (
            string(rtnl.IFLA_IFNAME, name)
            + u32(rtnl.IFLA_MTU, mtu)
            + attr(rtnl.IFLA_ADDRESS, mac_bytes(mac))
            + nested(rtnl.IFLA_LINKINFO, string(rtnl.IFLA_INFO_KIND, "bridge"), data)
        )
        return self._create("bridge", name, attrs)

    def create_veth(
        self, name: str, peer: str, peer_netns_fd: int, mtu: int, mac: str | None = None
    ) -> Link:
        """A veth pair: `name` here, `peer` (with `mac`, if given) in namespace `peer_netns_fd`."""
        peer_attrs = (
            string(rtnl.IFLA_IFNAME, peer)
            + u32(rtnl.IFLA_NET_NS_FD, peer_netns_fd)
            + u32(rtnl.IFLA_MTU, mtu)
        )
        if mac:
            peer_attrs += attr(rtnl.IFLA_ADDRESS, mac_bytes(mac))
        info = nested(
            rtnl.IFLA_LINKINFO,
            string(rtnl.IFLA_INFO_KIND, "veth"),
            nested(rtnl.IFLA_INFO_DATA, nested(rtnl.VETH_INFO_PEER, ifinfo(), peer_attrs)),
        )
        attrs = string(rtnl.IFLA_IFNAME, name) + u32(rtnl.IFLA_MTU, mtu) + info
        return self._create("veth", name, attrs)

    def set_link(
        self,
        index: int,
        *,
        mtu: int | None = None,
        mac: str | None = None,
        up: bool | None = None,
        master: int | None = None,
        promisc: bool | None = None,
    ) -> None:
        """Change what is given (None: leave as is)."""
        flags = change = 0
        if up is not None:
            change |= rtnl.IFF_UP
            flags |= rtnl.IFF_UP if up else 0
        if promisc is not None:
            change |= rtnl.IFF_PROMISC
            flags |= rtnl.IFF_PROMISC if promisc else 0
        body = ifinfo(index, flags, change)
        if master is not None:
            body += u32(rtnl.IFLA_MASTER, master)
        if mtu is not None:
            body += u32(rtnl.IFLA_MTU, mtu)
        if mac is not None:
            body += attr(rtnl.IFLA_ADDRESS, mac_bytes(mac))
        with self._raw("link set", f"ifindex {index}"):
            self._rtnl.request(rtnl.RTM_NEWLINK, body)

    def set_hairpin(self, index: int, on: bool) -> None:
        """Hairpin mode of a bridge port: frames may leave on the port they came in on."""
        mode = nested(rtnl.IFLA_PROTINFO, attr(rtnl.IFLA_BRPORT_MODE, bytes([1 if on else 0])))
        with self._raw("hairpin set", f"ifindex {index}"):
            self._rtnl.request(rtnl.RTM_SETLINK, ifinfo(index, family=AF_BRIDGE) + mode)

    def delete_link(self, index: int) -> None:
        with self._raw("link del", f"ifindex {index}", missing_ok=True):
            self._rtnl.request(rtnl.RTM_DELLINK, ifinfo(index))

    # -- addresses ------------------------------------------------------------------
    def addrs(self, index: int | None = None, family: int = AF_INET) -> list[Addr]:
        body = rtnl.IFADDRMSG.pack(family, 0, 0, 0, 0)
        with self._raw("addr dump", f"ifindex {index}"):
            replies = self._rtnl.dump(rtnl.RTM_GETADDR, body)
        return [
            Addr(m.index, _address(m.address), m.prefixlen)
            for m in rtnl.addr_msgs(replies, index)
            if len(m.address) in (4, 16)
        ]

    def _addr_body(self, addr: Addr) -> bytes:
        packed = addr.address.packed
        family = AF_INET6 if addr.address.version == 6 else AF_INET
        # IPv6: no duplicate address detection, so the address (e.g. the gateway on
        # the bridge) is usable at once instead of "tentative" for a second or two.
        flags = rtnl.IFA_F_NODAD if family == AF_INET6 else 0
        body = rtnl.IFADDRMSG.pack(family, addr.prefixlen, flags, RT_SCOPE_UNIVERSE, addr.index)
        if family == AF_INET:
            body += attr(rtnl.IFA_LOCAL, packed)
        return body + attr(rtnl.IFA_ADDRESS, packed)

    def add_addr(self, addr: Addr) -> None:
        """Add an address; one that is already there is fine."""
        with self._raw("addr add", f"{addr.address}/{addr.prefixlen}"):
            self._rtnl.request(rtnl.RTM_NEWADDR, self._addr_body(addr), REPLACE)

    def del_addr(self, addr: Addr) -> None:
        with self._raw("addr del", f"{addr.address}/{addr.prefixlen}", missing_ok=True):
            self._rtnl.request(rtnl.RTM_DELADDR, self._addr_body(addr))

    # -- routes ---------------------------------------------------------------------
    def _route_msgs(self, family: int) -> Iterator[rtnl.RouteMsg]:
        """The dump is read at once; its messages are decoded as the caller iterates."""
        body = rtnl.RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        with self._raw("route dump", f"family {family}"):
            replies = self._rtnl.dump(rtnl.RTM_GETROUTE, body)
        return rtnl.route_msgs(replies)

    def routes(
        self, proto: int | None = ROUTE_PROTO, family: int = AF_INET, tick: Tick | None = None
    ) -> list[Route]:
        out = []
        tick = tick or _nothing
        for m in self._route_msgs(family):
            tick()
            if m.table != MAIN_TABLE or m.type != rtnl.RTN_UNICAST:
                continue
            if m.family not in (AF_INET, AF_INET6) or (proto is not None and m.proto != proto):
                continue
            v6 = m.family == AF_INET6
            raw_dst = m.attrs.get(rtnl.RTA_DST) or bytes(16 if v6 else 4)
            raw_gw = m.attrs.get(rtnl.RTA_GATEWAY)
            gateway = _address(raw_gw) if raw_gw else None
            oif = m.attrs.get(rtnl.RTA_OIF)
            usual = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
            dst = (IPv6Network if v6 else IPv4Network)((raw_dst, m.dst_len))
            out.append(
                Route(  # positional: the fast path of a record's __init__ (dumps are large)
                    dst,
                    gateway,
                    struct.unpack("=i", oif)[0] if oif else 0,
                    bool(m.flags & rtnl.RTNH_F_ONLINK),
                    m.proto,
                    m.table,
                    None if m.scope == usual else m.scope,
                    m.u32(rtnl.RTA_PRIORITY) or None,
                    _through_ours(m, dst),
                )
            )
        return out

    def _route_get(self, ip: IPAddress, fib_match: bool) -> rtnl.RouteMsg | None:
        """`ip route get [fibmatch] IP` (either family): the resolved route, or with
        `fib_match` the table entry itself (its dst_len, protocol, table); None when
        nothing routes there."""
        flags = rtnl.RTM_F_FIB_MATCH if fib_match else 0
        family, bits = (AF_INET6, 128) if ip.version == 6 else (AF_INET, 32)
        body = rtnl.RTMSG.pack(family, bits, 0, 0, 0, 0, 0, 0, flags) + attr(
            rtnl.RTA_DST, ip.packed
        )
        with self._raw("route get", ip):
            try:
                replies = self._rtnl.get(rtnl.RTM_GETROUTE, body)
            except OSError as exc:
                if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENOENT):
                    return None
                raise
        return next(rtnl.route_msgs(replies), None)

    def route_to(self, dst: IPNetwork) -> Route | None:
        """The main-table unicast route to exactly `dst` (IPv4 or IPv6), whatever its
        protocol (one RTM_GETROUTE with RTM_F_FIB_MATCH, no dump), or None."""
        m = self._route_get(dst.network_address, fib_match=True)
        if m is None or m.dst_len != dst.prefixlen or m.table != MAIN_TABLE:
            return None
        if m.type != rtnl.RTN_UNICAST or rtnl.RTA_OIF not in m.attrs:  # multipath, blackhole
            return None
        raw_gw = m.attrs.get(rtnl.RTA_GATEWAY)
        gateway = _address(raw_gw) if raw_gw else None
        usual = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
        return Route(
            dst,
            gateway,
            struct.unpack("=i", m.attrs[rtnl.RTA_OIF])[0],
            bool(m.flags & rtnl.RTNH_F_ONLINK),
            m.proto,
            m.table,
            None if m.scope == usual else m.scope,
            m.u32(rtnl.RTA_PRIORITY) or None,
            _through_ours(m, dst),
        )

    def route_lookup(self, ip: IPAddress) -> tuple[int, IPAddress | None] | None:
        """What `ip route get IP` answers (either family): (outgoing ifindex, preferred
        source of that family), or None."""
        m = self._route_get(ip, fib_match=False)
        if m is None or rtnl.RTA_OIF not in m.attrs:
            return None
        src = m.attrs.get(rtnl.RTA_PREFSRC)
        source = _address(src) if src and len(src) == len(ip.packed) else None
        return struct.unpack("=i", m.attrs[rtnl.RTA_OIF])[0], source

    def _blackhole_body(self, dst: IPv4Network) -> bytes:
        body = rtnl.RTMSG.pack(
            AF_INET, dst.prefixlen, 0, 0, MAIN_TABLE, ROUTE_PROTO, RT_SCOPE_UNIVERSE,
            rtnl.RTN_BLACKHOLE, 0,
        )  # fmt: skip
        body += attr(rtnl.RTA_DST, dst.network_address.packed)
        return body + u32(rtnl.RTA_TABLE, MAIN_TABLE) + u32(rtnl.RTA_PRIORITY, BLACKHOLE_METRIC)

    def replace_blackhole(self, dst: IPv4Network) -> None:
        with self._raw("blackhole route replace", dst):
            self._rtnl.request(rtnl.RTM_NEWROUTE, self._blackhole_body(dst), REPLACE)

    def del_blackhole(self, dst: IPv4Network) -> None:
        with self._raw("blackhole route del", dst, missing_ok=True):
            self._rtnl.request(rtnl.RTM_DELROUTE, self._blackhole_body(dst))

    def default_route_oif(self, family: int = AF_INET) -> int | None:
        for m in self._route_msgs(family):
            if m.dst_len == 0 and m.table == MAIN_TABLE and rtnl.RTA_OIF in m.attrs:
                return int(struct.unpack("=i", m.attrs[rtnl.RTA_OIF])[0])
        return None

    @staticmethod
    def _route_body(route: Route, delete: bool = False) -> bytes:
        family = AF_INET6 if route.dst.version == 6 else AF_INET
        if delete:  # match any scope and type
            scope, rtype = rtnl.RT_SCOPE_NOWHERE, rtnl.RTN_UNSPEC
        elif route.scope is not None:
            scope, rtype = route.scope, rtnl.RTN_UNICAST
        else:
            usual = RT_SCOPE_UNIVERSE if route.gateway is not None else RT_SCOPE_LINK
            scope, rtype = usual, rtnl.RTN_UNICAST
        table = route.table
        # Through a nexthop object: the gateway, device and onlink flag are the
        # nexthop's (the kernel refuses them beside RTA_NH_ID).
        flags = rtnl.RTNH_F_ONLINK if route.onlink and not route.nexthop else 0
        body = rtnl.RTMSG.pack(
            family, route.dst.prefixlen, 0, 0, table if table < 256 else 0, route.proto,
            scope, rtype, flags,
        )  # fmt: skip
        if route.dst.prefixlen:
            body += attr(rtnl.RTA_DST, route.dst.network_address.packed)
        # A delete names neither gateway nor nexthop: it matches our route to the
        # destination in either form.
        if not delete and route.nexthop:
            body += u32(rtnl.RTA_NH_ID, nexthop_id(route.dst))
        elif not delete:
            if route.gateway is not None:
                body += attr(rtnl.RTA_GATEWAY, route.gateway.packed)
            body += u32(rtnl.RTA_OIF, route.oif)
        body += u32(rtnl.RTA_TABLE, table)
        if route.priority is not None:
            body += u32(rtnl.RTA_PRIORITY, route.priority)
        return body

    def add_route(self, route: Route) -> None:
        """Create only: RouteExists if the table already has a route to that destination."""
        self._one("add_route", route)

    def replace_route(self, route: Route) -> None:
        self._one("replace_route", route)

    def del_route(self, route: Route) -> None:
        self._one("del_route", route)

    # -- nexthop objects --------------------------------------------------------------
    def nexthops_usable(self) -> bool:
        """Whether this kernel has nexthop objects (Linux 5.3) and reports a nexthop
        route's gateway in route dumps (net.ipv4.nexthop_compat_mode, on by default)."""
        try:
            with in_netns(self._netns), open("/proc/sys/net/ipv4/nexthop_compat_mode") as fh:
                if fh.read().strip() != "1":
                    return False
            self.nexthops()
        except (OSError, KernelError):
            return False
        return True

    @staticmethod
    def _to_nexthop(m: rtnl.NexthopMsg) -> Nexthop:
        raw = m.attrs.get(rtnl.NHA_GATEWAY)
        gateway = _address(raw) if raw and len(raw) in (4, 16) else None
        onlink = bool(m.flags & rtnl.RTNH_F_ONLINK)
        return Nexthop(m.u32(rtnl.NHA_ID), gateway, m.u32(rtnl.NHA_OIF), onlink, m.proto)

    def nexthops(self, proto: int | None = ROUTE_PROTO, tick: Tick | None = None) -> list[Nexthop]:
        with self._raw("nexthop dump", "all"):
            replies = self._rtnl.dump(rtnl.RTM_GETNEXTHOP, rtnl.NHMSG.pack(AF_UNSPEC, 0, 0, 0, 0))
        tick = tick or _nothing
        out = []
        for m in rtnl.nexthop_msgs(replies):
            tick()
            if proto is None or m.proto == proto:
                out.append(self._to_nexthop(m))
        return out

    def nexthop(self, nhid: int) -> Nexthop | None:
        body = rtnl.NHMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + u32(rtnl.NHA_ID, nhid)
        with self._raw("nexthop get", nhid):
            try:
                replies = self._rtnl.get(rtnl.RTM_GETNEXTHOP, body)
            except OSError as exc:
                if rtnl.is_missing(exc):
                    return None
                raise
        m = next(rtnl.nexthop_msgs(replies), None)
        return self._to_nexthop(m) if m is not None else None

    @staticmethod
    def _nexthop_body(nexthop: Nexthop, delete: bool = False) -> bytes:
        if delete:
            return rtnl.NHMSG.pack(AF_UNSPEC, 0, 0, 0, 0) + u32(rtnl.NHA_ID, nexthop.id)
        flags = rtnl.RTNH_F_ONLINK if nexthop.onlink else 0
        return (
            rtnl.NHMSG.pack(AF_INET, 0, nexthop.proto, 0, flags)
            + u32(rtnl.NHA_ID, nexthop.id)
            + u32(rtnl.NHA_OIF, nexthop.oif)
            + (attr(rtnl.NHA_GATEWAY, nexthop.gateway.packed) if nexthop.gateway else b"")
        )

    def foreign_nexthop_ids(self, proto: int = ROUTE_PROTO) -> set[int]:
        """Ids of the nexthops whose protocol is not `proto` (ours are not decoded)."""
        with self._raw("nexthop dump", "all"):
            replies = self._rtnl.dump(rtnl.RTM_GETNEXTHOP, rtnl.NHMSG.pack(AF_UNSPEC, 0, 0, 0, 0))
        return {m.u32(rtnl.NHA_ID) for m in rtnl.nexthop_msgs(replies, skip_proto=proto)}

    def del_nexthop(self, nexthop: Nexthop) -> None:
        self._one("del_nexthop", nexthop)

    # -- neighbours and FDB entries -------------------------------------------------
    @staticmethod
    def _neigh_body(family: int, ifindex: int, dst: bytes, mac: str | None, state: int,
                    ntf: int = 0) -> bytes:  # fmt: skip
        body = rtnl.NDMSG.pack(family, ifindex, state, ntf, 0) + attr(rtnl.NDA_DST, dst)
        if mac is not None:
            body += attr(rtnl.NDA_LLADDR, mac_bytes(mac))
        return body

    def neighs(self, ifindex: int, tick: Tick | None = None) -> list[Neigh]:
        """Permanent IPv4 and IPv6 neighbours of one device (one dump: ARP and ND tables)."""
        body = rtnl.NDMSG.pack(AF_UNSPEC, 0, 0, 0, 0)
        with self._raw("neigh dump", f"ifindex {ifindex}"):
            replies = self._rtnl.dump(rtnl.RTM_GETNEIGH, body)
        out = []
        tick = tick or _nothing
        for m in rtnl.neigh_msgs(replies, ifindex):
            tick()
            dst = m.attrs.get(rtnl.NDA_DST, b"")
            # Only permanent entries are ours; the kernel's own dynamic ones are not.
            if m.state & NUD_PERMANENT and m.family in (AF_INET, AF_INET6) and len(dst) in (4, 16):
                out.append(Neigh(ifindex, _address(dst), mac_str(m.attrs.get(NDA_LLADDR, b""))))
        return out

    def replace_neigh(self, neigh: Neigh) -> None:
        self._one("replace_neigh", neigh)

    def del_neigh(self, neigh: Neigh) -> None:
        self._one("del_neigh", neigh)

    def fdbs(self, ifindex: int, tick: Tick | None = None) -> list[Fdb]:
        body = rtnl.NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0)
        with self._raw("fdb dump", f"ifindex {ifindex}"):
            replies = self._rtnl.dump(rtnl.RTM_GETNEIGH, body)
        out = []
        tick = tick or _nothing
        for m in rtnl.neigh_msgs(replies, ifindex):
            tick()
            dst = m.attrs.get(rtnl.NDA_DST, b"")
            # Entries without a remote (e.g. the device's own address) are not peers.
            if len(dst) in (4, 16) and rtnl.NDA_LLADDR in m.attrs:
                out.append(Fdb(ifindex, mac_str(m.attrs[rtnl.NDA_LLADDR]), _address(dst)))
        return out

    def replace_fdb(self, fdb: Fdb) -> None:
        self._one("replace_fdb", fdb)

    def del_fdb(self, fdb: Fdb) -> None:
        self._one("del_fdb", fdb)

    # -- writes of neighbours, FDB entries and routes, one or many at a time ------------
    def _write(self, op: str, obj: Any) -> _Write:
        """The request `op` (a method name, see BATCH_OPS) sends for `obj`."""
        if op in ("replace_neigh", "del_neigh"):
            family = AF_INET6 if obj.ip.version == 6 else AF_INET
            if op == "del_neigh":
                body = self._neigh_body(family, obj.ifindex, obj.ip.packed, None, 0)
                return rtnl.RTM_DELNEIGH, body, 0, "neigh del", obj.ip
            body = self._neigh_body(family, obj.ifindex, obj.ip.packed, obj.mac, NUD_PERMANENT)
            return rtnl.RTM_NEWNEIGH, body, REPLACE, "neigh replace", obj.ip
        if op in ("replace_fdb", "del_fdb"):
            body = self._neigh_body(AF_BRIDGE, obj.ifindex, obj.dst.packed, obj.mac,
                                    NUD_PERMANENT | NUD_NOARP, NTF_SELF)  # fmt: skip
            if op == "del_fdb":
                return rtnl.RTM_DELNEIGH, body, 0, "fdb del", obj.mac
            return rtnl.RTM_NEWNEIGH, body, REPLACE, "fdb replace", obj.mac
        if op == "add_route":
            via = f" via {obj.gateway}" if obj.gateway is not None else ""
            return rtnl.RTM_NEWROUTE, self._route_body(obj), CREATE, "route add", f"{obj.dst}{via}"
        if op == "replace_route":
            return rtnl.RTM_NEWROUTE, self._route_body(obj), REPLACE, "route replace", obj.dst
        if op == "del_route":
            body = self._route_body(obj, delete=True)
            return rtnl.RTM_DELROUTE, body, 0, "route del", obj.dst
        if op in ("add_nexthop", "replace_nexthop"):
            flags, name = (
                (CREATE, "nexthop add") if op == "add_nexthop" else (REPLACE, "nexthop replace")
            )
            return (
                rtnl.RTM_NEWNEXTHOP,
                self._nexthop_body(obj),
                flags,
                name,
                f"id {obj.id} via {obj.gateway}",
            )
        if op == "del_nexthop":
            body = self._nexthop_body(obj, delete=True)
            return rtnl.RTM_DELNEXTHOP, body, 0, "nexthop del", f"id {obj.id}"
        raise ValueError(f"not a batchable write: {op}")

    @staticmethod
    def _refusal(op: str, obj: Any, write: _Write, code: int) -> KernelError | None:
        """What the single call `op` raises when the kernel answers `code` (None: nothing)."""
        if not code or (op.startswith("del_") and code in _MISSING):
            return None  # done, or already gone: what a delete wanted
        if op == "add_route" and code == errno.EEXIST:
            return RouteExists(obj.dst)
        if op == "add_nexthop" and code == errno.EEXIST:
            return NexthopExists(obj.id)
        return KernelError(f"netlink {write[3]} failed for {write[4]}", os.strerror(code), code)

    def _writes(self, op: str, obj: Any) -> list[tuple[str, Any, _Write]]:
        """The requests of one write, each with its own op and object: a route through
        its nexthop object adds or replaces the nexthop first and deletes it last."""
        if op in ("add_route", "replace_route", "del_route") and obj.nexthop:
            nh = route_nexthop(obj)
            if op == "del_route":
                return [(op, obj, self._write(op, obj)),
                        ("del_nexthop", nh, self._write("del_nexthop", nh))]  # fmt: skip
            nh_op = "add_nexthop" if op == "add_route" else "replace_nexthop"
            return [(nh_op, nh, self._write(nh_op, nh)), (op, obj, self._write(op, obj))]
        return [(op, obj, self._write(op, obj))]

    def _one(self, op: str, obj: Any) -> None:
        error = self.apply_many([(op, obj)])[0]
        if error is not None:
            raise error

    def apply_many(self, ops: Sequence[Op]) -> list[KernelError | None]:
        """Many writes in few datagrams (see RtnlSocket.request_many); per op, what its
        own method would have raised (its first refused request's error), or None."""
        parts = [self._writes(op, obj) for op, obj in ops]
        codes = iter(self._rtnl.request_many([w[:3] for part in parts for _, _, w in part]))
        out: list[KernelError | None] = []
        for part in parts:
            errors = [self._refusal(sub, o, w, next(codes)) for sub, o, w in part]
            out.append(next((e for e in errors if e is not None), None))
        return out

    # -- sysctls --------------------------------------------------------------------
    def sysctl(self, key: str, value: str) -> None:
        """Write /proc/sys/<key> in this object's namespace; a missing key is skipped.

        /proc/sys/net shows the namespace of the thread that opens the file.
        """
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with in_netns(self._netns), open(path, "w") as fh:
                fh.write(value)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise KernelError(f"sysctl {key}={value} failed", exc.strerror, exc.errno) from None


if TYPE_CHECKING:  # mypy proves that RawNetlink implements the whole interface
    _implements: type[Netlink] = RawNetlink
