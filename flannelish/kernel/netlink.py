"""The thin kernel layer: every netlink call the daemon makes goes through here.

Three parts:

* plain records (:class:`Link`, :class:`Addr`, :class:`Neigh`, :class:`Fdb`,
  :class:`Route`) so the rest of the code never sees pyroute2 messages;
* the :class:`Netlink` protocol with three implementations: :class:`RawNetlink`
  (the real kernel through hand-packed rtnetlink messages, see
  :mod:`flannelish.kernel.rtnl`; what the daemon uses: fast, and no pyroute2
  import), :class:`PyRoute2Netlink` (links and addresses through pyroute2, a
  cross-check for the raw encoder in the kernel tests) and
  :class:`FakeNetlink` (an in-memory kernel for root-free unit tests, which
  also records the order of mutating calls);
* :class:`ChangeMonitor`, a raw rtnetlink multicast socket that only tells
  *that* something relevant changed; the reconciler then re-reads the state.
  Parsing just the fixed headers keeps it independent of pyroute2's asyncio
  internals and safe to block on from a plain thread.

Mutations use "replace" semantics so repeating them is harmless.  Routes we
own carry :data:`ROUTE_PROTO` (unused in /etc/iproute2/rt_protos), so a dump
filtered by it never returns a route somebody else made.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, ip_address
from typing import Any, Protocol

from flannelish.errors import KernelError
from flannelish.kernel.rtnl import (
    AF_BRIDGE,
    IFADDRMSG,
    IFF_UP,
    IFINFOMSG,
    IFLA_ADDRESS,
    IFLA_VXLAN_ID,
    IFLA_VXLAN_LEARNING,
    IFLA_VXLAN_LINK,
    IFLA_VXLAN_LOCAL,
    IFLA_VXLAN_PORT,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    RT_SCOPE_UNIVERSE,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    RTMSG,
    RTNH_F_ONLINK,
    LinkMsg,
    RtnlSocket,
    current_netns_fd,
    is_missing,
    mac_str,
    messages,
    parse_attrs,
    setns,
)

ROUTE_PROTO = 0x46  # "F": marks routes flannelish owns
MAIN_TABLE = 254


@dataclass(frozen=True)
class VxlanInfo:
    vni: int
    local: IPv4Address | None
    link: int | None  # index of the underlay device
    port: int
    learning: bool = False


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "" for links without linkinfo (lo, physical NICs)
    mac: str
    mtu: int
    up: bool
    vxlan: VxlanInfo | None = None


@dataclass(frozen=True)
class Addr:
    index: int
    address: IPv4Address
    prefixlen: int


@dataclass(frozen=True)
class Neigh:
    """A permanent IPv4 neighbour entry (ip neigh ... nud permanent)."""

    ifindex: int
    ip: IPv4Address
    mac: str


@dataclass(frozen=True)
class Fdb:
    """A VXLAN forwarding entry (bridge fdb ... dst <ip> self permanent)."""

    ifindex: int
    mac: str
    dst: IPv4Address


@dataclass(frozen=True)
class Route:
    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int
    onlink: bool = False
    proto: int = ROUTE_PROTO


@dataclass(frozen=True)
class VxlanSpec:
    """What `create_vxlan` builds."""

    name: str
    vni: int
    local: IPv4Address
    link: int
    port: int
    mac: str
    mtu: int
    learning: bool = False
    gbp: bool = False


class RouteExists(KernelError):
    """The table already holds a route to this destination (perhaps not ours)."""

    def __init__(self, dst: IPv4Network) -> None:
        super().__init__(f"a route to {dst} already exists")
        self.dst = dst


class Netlink(Protocol):
    """The kernel operations flannelish needs, in one network namespace."""

    def links(self) -> list[Link]: ...
    def link(self, name: str) -> Link | None: ...
    def create_vxlan(self, spec: VxlanSpec) -> Link: ...
    def delete_link(self, index: int) -> None: ...
    def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None: ...
    def addrs(self, index: int | None = None) -> list[Addr]: ...
    def add_addr(self, addr: Addr) -> None: ...
    def del_addr(self, addr: Addr) -> None: ...
    def default_route_oif(self) -> int | None: ...
    def neighs(self, ifindex: int) -> list[Neigh]: ...
    def replace_neigh(self, neigh: Neigh) -> None: ...
    def del_neigh(self, neigh: Neigh) -> None: ...
    def fdbs(self, ifindex: int) -> list[Fdb]: ...
    def replace_fdb(self, fdb: Fdb) -> None: ...
    def del_fdb(self, fdb: Fdb) -> None: ...
    def routes(self, proto: int = ROUTE_PROTO) -> list[Route]: ...
    def add_route(self, route: Route) -> None: ...
    def replace_route(self, route: Route) -> None: ...
    def del_route(self, route: Route) -> None: ...
    def close(self) -> None: ...


@contextlib.contextmanager
def netns_scope(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread inside /run/netns/<name> (no fork).

    Sockets opened in the block stay bound to that namespace after it ends.
    A missing namespace raises KernelError; it is never created (pyroute2's
    own helpers create a namespace whose name is mistyped).
    """
    if name is None:
        yield
        return
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except OSError as exc:
        raise KernelError(f"network namespace {name!r} not found", exc.strerror) from None
    home = current_netns_fd()
    try:
        try:
            setns(target)
        except OSError as exc:
            raise KernelError(f"cannot enter network namespace {name!r}", exc.strerror) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # as before: a failed return is not raised
                setns(home)
    finally:
        os.close(target)
        os.close(home)


def _mac(value: Any) -> str:
    return str(value or "").lower()


class _RtnlEntries:
    """Per-peer entries (neigh, FDB, routes) through the raw rtnetlink socket."""

    _rtnl: RtnlSocket

    @contextlib.contextmanager
    def _raw(self, op: str, what: Any, missing_ok: bool = False) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if missing_ok and is_missing(exc):
                return  # already gone: what a delete wanted
            raise KernelError(f"netlink {op} failed for {what}", exc.strerror) from None

    def routes(self, proto: int = ROUTE_PROTO) -> list[Route]:
        out = []
        with self._raw("route dump", f"proto {proto}"):
            msgs = self._rtnl.routes()
        for m in msgs:
            if m.proto != proto or m.table != MAIN_TABLE:
                continue
            dst = IPv4Address(m.attrs.get(RTA_DST, b"\0\0\0\0"))
            gw = m.attrs.get(RTA_GATEWAY)
            oif = m.attrs.get(RTA_OIF)
            out.append(
                Route(
                    dst=IPv4Network(f"{dst}/{m.dst_len}"),
                    gateway=IPv4Address(gw) if gw else None,
                    oif=struct.unpack("=i", oif)[0] if oif else 0,
                    onlink=bool(m.flags & RTNH_F_ONLINK),
                    proto=m.proto,
                )
            )
        return out

    def add_route(self, route: Route) -> None:
        """Create only: RouteExists if the table already has a route to that destination."""
        try:
            self._route("add", route)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise RouteExists(route.dst) from None
            raise KernelError(f"netlink route add failed for {route.dst}", exc.strerror) from None

    def replace_route(self, route: Route) -> None:
        with self._raw("route replace", route.dst):
            self._route("replace", route)

    def _route(self, op: str, route: Route) -> None:
        gw = route.gateway.packed if route.gateway is not None else None
        self._rtnl.route(
            op,
            route.dst.network_address.packed,
            route.dst.prefixlen,
            gw,
            route.oif,
            proto=route.proto,
            table=MAIN_TABLE,
            scope=RT_SCOPE_UNIVERSE,
            onlink=route.onlink,
        )

    def del_route(self, route: Route) -> None:
        with self._raw("route del", route.dst, missing_ok=True):
            self._rtnl.route(
                "del",
                route.dst.network_address.packed,
                route.dst.prefixlen,
                proto=route.proto,
                table=MAIN_TABLE,
            )

    def neighs(self, ifindex: int) -> list[Neigh]:
        with self._raw("neigh dump", f"ifindex {ifindex}"):
            msgs = self._rtnl.neighs(socket.AF_INET, ifindex)
        return [
            Neigh(ifindex, IPv4Address(m.attrs[NDA_DST]), mac_str(m.attrs.get(NDA_LLADDR, b"")))
            for m in msgs
            # Only permanent entries are ours; the kernel's own dynamic ones are not.
            if m.ifindex == ifindex
            and m.state & NUD_PERMANENT
            and len(m.attrs.get(NDA_DST, b"")) == 4
        ]

    def replace_neigh(self, neigh: Neigh) -> None:
        with self._raw("neigh replace", neigh.ip):
            self._rtnl.neigh(
                "replace", socket.AF_INET, neigh.ifindex, neigh.ip.packed, neigh.mac, NUD_PERMANENT
            )

    def del_neigh(self, neigh: Neigh) -> None:
        with self._raw("neigh del", neigh.ip, missing_ok=True):
            self._rtnl.neigh("del", socket.AF_INET, neigh.ifindex, neigh.ip.packed, None, 0)

    def fdbs(self, ifindex: int) -> list[Fdb]:
        with self._raw("fdb dump", f"ifindex {ifindex}"):
            msgs = self._rtnl.neighs(AF_BRIDGE, ifindex)
        return [
            Fdb(ifindex, mac_str(m.attrs[NDA_LLADDR]), IPv4Address(m.attrs[NDA_DST]))
            for m in msgs
            # Entries without an IPv4 remote (e.g. the device's own address) are not peers.
            if m.ifindex == ifindex
            and len(m.attrs.get(NDA_DST, b"")) == 4
            and NDA_LLADDR in m.attrs
        ]

    def replace_fdb(self, fdb: Fdb) -> None:
        with self._raw("fdb replace", fdb.mac):
            self._rtnl.neigh(
                "replace", AF_BRIDGE, fdb.ifindex, fdb.dst.packed, fdb.mac,
                NUD_PERMANENT | NUD_NOARP, NTF_SELF,
            )  # fmt: skip

    def del_fdb(self, fdb: Fdb) -> None:
        with self._raw("fdb del", fdb.mac, missing_ok=True):
            self._rtnl.neigh(
                "del", AF_BRIDGE, fdb.ifindex, fdb.dst.packed, fdb.mac,
                NUD_PERMANENT | NUD_NOARP, NTF_SELF,
            )  # fmt: skip


class RawNetlink(_RtnlEntries):
    """The real kernel through raw rtnetlink only: what the daemon uses.

    The socket belongs to the namespace of the process (the daemon runs inside
    its node's namespace via `ip netns exec`) or of `netns` when given.
    """

    def __init__(self, netns: str | None = None) -> None:
        with netns_scope(netns):
            self._rtnl = RtnlSocket()

    def _to_link(self, msg: LinkMsg) -> Link:
        kind, data = msg.linkinfo()
        vxlan = None
        if kind == "vxlan":
            local = data.get(IFLA_VXLAN_LOCAL)
            link = data.get(IFLA_VXLAN_LINK)
            port = data.get(IFLA_VXLAN_PORT)
            vxlan = VxlanInfo(
                vni=struct.unpack("=I", data[IFLA_VXLAN_ID])[0] if IFLA_VXLAN_ID in data else 0,
                local=IPv4Address(local) if local and len(local) == 4 else None,
                link=struct.unpack("=I", link)[0] if link else None,
                port=struct.unpack("!H", port)[0] if port else 0,
                learning=bool(data.get(IFLA_VXLAN_LEARNING, b"\0")[0]),
            )
        return Link(
            index=msg.index,
            name=msg.name,
            kind=kind,
            mac=mac_str(msg.attrs.get(IFLA_ADDRESS, b"")),
            mtu=msg.mtu,
            up=bool(msg.flags & IFF_UP),
            vxlan=vxlan,
        )

    def links(self) -> list[Link]:
        with self._raw("link dump", "all links"):
            return [self._to_link(m) for m in self._rtnl.links()]

    def link(self, name: str) -> Link | None:
        with self._raw("link get", name):
            msgs = self._rtnl.links(name)
        return self._to_link(msgs[0]) if msgs else None

    def create_vxlan(self, spec: VxlanSpec) -> Link:
        with self._raw("vxlan add", spec.name):
            self._rtnl.vxlan_add(
                spec.name, spec.vni, spec.local.packed, spec.link, spec.port, spec.learning,
                spec.gbp, spec.mac, spec.mtu,
            )  # fmt: skip
        link = self.link(spec.name)
        if link is None:
            raise KernelError(f"vxlan device {spec.name} vanished right after creation")
        return link

    def delete_link(self, index: int) -> None:
        with self._raw("link del", f"ifindex {index}", missing_ok=True):
            self._rtnl.del_link(index)

    def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None:
        with self._raw("link set", f"ifindex {index}"):
            self._rtnl.set_link(index, mtu=mtu, mac=mac, up=up)

    def addrs(self, index: int | None = None) -> list[Addr]:
        with self._raw("addr dump", f"ifindex {index}"):
            msgs = self._rtnl.addrs(socket.AF_INET)
        return [
            Addr(m.index, IPv4Address(m.address), m.prefixlen)
            for m in msgs
            if len(m.address) == 4 and (index is None or m.index == index)
        ]

    def add_addr(self, addr: Addr) -> None:
        with self._raw("addr add", f"{addr.address}/{addr.prefixlen}"):
            self._rtnl.addr("replace", addr.index, addr.address.packed, addr.prefixlen)

    def del_addr(self, addr: Addr) -> None:
        with self._raw("addr del", f"{addr.address}/{addr.prefixlen}", missing_ok=True):
            self._rtnl.addr("del", addr.index, addr.address.packed, addr.prefixlen)

    def default_route_oif(self) -> int | None:
        with self._raw("route dump", "default route"):
            msgs = self._rtnl.routes()
        for m in msgs:
            if m.dst_len == 0 and m.table == MAIN_TABLE and RTA_OIF in m.attrs:
                return int(struct.unpack("=i", m.attrs[RTA_OIF])[0])
        return None

    def close(self) -> None:
        self._rtnl.close()


class PyRoute2Netlink(_RtnlEntries):
    """Links and addresses through pyroute2's IPRoute, per-peer entries raw.

    Kept as an independent implementation of the link/address half: the
    kernel tests run against both, so a mistake in the hand-packed messages
    of RawNetlink shows up as a difference.  A lock serialises threads.
    """

    def __init__(self, netns: str | None = None) -> None:
        from pyroute2 import IPRoute  # heavy import, kept out of `--help`
        from pyroute2.netlink.exceptions import NetlinkError

        with netns_scope(netns):  # tests and benchmarks drive a namespace from outside
            self._ipr = IPRoute()
            self._rtnl = RtnlSocket()
        self._lock = threading.RLock()
        self._error = NetlinkError

    @contextlib.contextmanager
    def _call(self, op: str, what: Any) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except self._error as exc:
                raise KernelError(f"netlink {op} failed for {what}", exc.args[-1]) from None
            except OSError as exc:
                raise KernelError(f"netlink {op} failed for {what}", str(exc)) from None

    # -- links ---------------------------------------------------------------
    def _to_link(self, msg: Any) -> Link:
        info = msg.get("IFLA_LINKINFO")
        kind = info.get("IFLA_INFO_KIND") if info else None
        vxlan = None
        if kind == "vxlan":
            data = info.get("IFLA_INFO_DATA")
            local = data.get("IFLA_VXLAN_LOCAL")
            vxlan = VxlanInfo(
                vni=int(data.get("IFLA_VXLAN_ID") or 0),
                local=IPv4Address(local) if local else None,
                link=data.get("IFLA_VXLAN_LINK"),
                port=int(data.get("IFLA_VXLAN_PORT") or 0),
                learning=bool(data.get("IFLA_VXLAN_LEARNING")),
            )
        return Link(
            index=msg["index"],
            name=msg.get("IFLA_IFNAME"),
            kind=kind or "",
            mac=_mac(msg.get("IFLA_ADDRESS")),
            mtu=int(msg.get("IFLA_MTU") or 0),
            up=bool(msg["flags"] & 1),
            vxlan=vxlan,
        )

    def links(self) -> list[Link]:
        with self._call("link dump", "all links"):
            return [self._to_link(m) for m in self._ipr.link("dump")]

    def link(self, name: str) -> Link | None:
        with self._call("link get", name):
            try:
                msgs = self._ipr.link("get", ifname=name)
            except self._error as exc:
                if exc.code == 19:  # ENODEV
                    return None
                raise
            return self._to_link(msgs[0]) if msgs else None

    def create_vxlan(self, spec: VxlanSpec) -> Link:
        with self._call("vxlan add", spec.name):
            kwargs: dict[str, Any] = {
                "ifname": spec.name,
                "kind": "vxlan",
                "vxlan_id": spec.vni,
                "vxlan_local": str(spec.local),
                "vxlan_link": spec.link,
                "vxlan_port": spec.port,
                "vxlan_learning": int(spec.learning),
                "address": spec.mac,
                "mtu": spec.mtu,
            }
            if spec.gbp:
                kwargs["vxlan_gbp"] = True
            self._ipr.link("add", **kwargs)
        link = self.link(spec.name)
        if link is None:
            raise KernelError(f"vxlan device {spec.name} vanished right after creation")
        return link

    def delete_link(self, index: int) -> None:
        with self._call("link del", f"ifindex {index}"):
            self._ipr.link("del", index=index)

    def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None:
        kwargs: dict[str, Any] = {}
        if mtu is not None:
            kwargs["mtu"] = mtu
        if mac is not None:
            kwargs["address"] = mac
        if up is not None:
            kwargs["state"] = "up" if up else "down"
        with self._call("link set", f"ifindex {index} {kwargs}"):
            self._ipr.link("set", index=index, **kwargs)

    # -- addresses and routes ---------------------------------------------------
    def addrs(self, index: int | None = None) -> list[Addr]:
        filt = {"index": index} if index is not None else {}
        with self._call("addr dump", f"ifindex {index}"):
            msgs = self._ipr.addr("dump", family=socket.AF_INET, **filt)
            return [
                Addr(m["index"], IPv4Address(m.get("IFA_ADDRESS")), m["prefixlen"]) for m in msgs
            ]

    def add_addr(self, addr: Addr) -> None:
        with self._call("addr add", f"{addr.address}/{addr.prefixlen}"):
            self._ipr.addr(
                "replace", index=addr.index, address=str(addr.address), prefixlen=addr.prefixlen
            )

    def del_addr(self, addr: Addr) -> None:
        with self._call("addr del", f"{addr.address}/{addr.prefixlen}"):
            self._ipr.addr(
                "del", index=addr.index, address=str(addr.address), prefixlen=addr.prefixlen
            )

    def default_route_oif(self) -> int | None:
        with self._call("route dump", "default route"):
            for msg in self._ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE):
                if msg["dst_len"] == 0 and msg.get("RTA_OIF"):
                    return int(msg.get("RTA_OIF"))
        return None

    def close(self) -> None:
        with self._lock:
            self._ipr.close()
            self._rtnl.close()


# -- the in-memory fake ----------------------------------------------------------


@dataclass
class FakeNetlink:
    """An in-memory kernel with just enough behaviour for reconciler tests.

    ``calls`` lists every mutating call as ``(op, object)`` in order, and
    ``fail_on`` makes the named ops raise KernelError (to test error paths).
    """

    _links: dict[int, Link] = field(default_factory=dict)
    _addrs: set[Addr] = field(default_factory=set)
    _neighs: dict[tuple[int, IPv4Address], Neigh] = field(default_factory=dict)
    _fdbs: dict[tuple[int, str, IPv4Address], Fdb] = field(default_factory=dict)
    _routes: dict[IPv4Network, Route] = field(default_factory=dict)
    default_oif: int | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)
    _next_index: int = 100

    def _mutate(self, op: str, obj: Any) -> None:
        if op in self.fail_on:
            raise KernelError(f"netlink {op} failed for {obj}", "injected by the test")
        self.calls.append((op, obj))

    def add_link(self, name: str, mtu: int = 1500, kind: str = "", up: bool = True) -> Link:
        self._next_index += 1
        mac = f"02:00:00:00:{self._next_index // 256:02x}:{self._next_index % 256:02x}"
        link = Link(self._next_index, name, kind, mac, mtu, up)
        self._links[link.index] = link
        return link

    def links(self) -> list[Link]:
        return list(self._links.values())

    def link(self, name: str) -> Link | None:
        return next((x for x in self._links.values() if x.name == name), None)

    def create_vxlan(self, spec: VxlanSpec) -> Link:
        if self.link(spec.name) is not None:
            raise KernelError(f"netlink vxlan add failed for {spec.name}", "File exists")
        self._mutate("create_vxlan", spec.name)
        self._next_index += 1
        info = VxlanInfo(spec.vni, spec.local, spec.link, spec.port, spec.learning)
        link = Link(self._next_index, spec.name, "vxlan", spec.mac, spec.mtu, False, info)
        self._links[link.index] = link
        return link

    def delete_link(self, index: int) -> None:
        self._mutate("delete_link", index)
        self._links.pop(index, None)
        self._addrs = {a for a in self._addrs if a.index != index}
        self._neighs = {k: v for k, v in self._neighs.items() if v.ifindex != index}
        self._fdbs = {k: v for k, v in self._fdbs.items() if v.ifindex != index}
        self._routes = {k: v for k, v in self._routes.items() if v.oif != index}

    def set_link(
        self, index: int, *, mtu: int | None = None, mac: str | None = None, up: bool | None = None
    ) -> None:
        self._mutate("set_link", (index, mtu, mac, up))
        link = self._links[index]
        self._links[index] = replace(
            link,
            mtu=link.mtu if mtu is None else mtu,
            mac=link.mac if mac is None else mac,
            up=link.up if up is None else up,
        )

    def addrs(self, index: int | None = None) -> list[Addr]:
        return [a for a in self._addrs if index is None or a.index == index]

    def add_addr(self, addr: Addr) -> None:
        self._mutate("add_addr", addr)
        self._addrs.add(addr)

    def del_addr(self, addr: Addr) -> None:
        self._mutate("del_addr", addr)
        self._addrs.discard(addr)

    def default_route_oif(self) -> int | None:
        return self.default_oif

    def neighs(self, ifindex: int) -> list[Neigh]:
        return [n for n in self._neighs.values() if n.ifindex == ifindex]

    def replace_neigh(self, neigh: Neigh) -> None:
        self._mutate("replace_neigh", neigh)
        self._neighs[(neigh.ifindex, neigh.ip)] = neigh

    def del_neigh(self, neigh: Neigh) -> None:
        self._mutate("del_neigh", neigh)
        self._neighs.pop((neigh.ifindex, neigh.ip), None)

    def fdbs(self, ifindex: int) -> list[Fdb]:
        return [f for f in self._fdbs.values() if f.ifindex == ifindex]

    def replace_fdb(self, fdb: Fdb) -> None:
        self._mutate("replace_fdb", fdb)
        # Like the kernel: replace keys on the MAC, so a new dst overwrites the old one.
        self._fdbs = {k: v for k, v in self._fdbs.items() if k[:2] != (fdb.ifindex, fdb.mac)}
        self._fdbs[(fdb.ifindex, fdb.mac, fdb.dst)] = fdb

    def append_fdb(self, fdb: Fdb) -> None:
        """Like `bridge fdb append`: a second dst for one MAC (what a stray tool may leave)."""
        self._fdbs[(fdb.ifindex, fdb.mac, fdb.dst)] = fdb

    def del_fdb(self, fdb: Fdb) -> None:
        self._mutate("del_fdb", fdb)
        self._fdbs.pop((fdb.ifindex, fdb.mac, fdb.dst), None)

    def routes(self, proto: int = ROUTE_PROTO) -> list[Route]:
        return [r for r in self._routes.values() if r.proto == proto]

    def add_route(self, route: Route) -> None:
        self._mutate("add_route", route)
        if route.dst in self._routes:
            raise RouteExists(route.dst)
        self._routes[route.dst] = route

    def replace_route(self, route: Route) -> None:
        self._mutate("replace_route", route)
        self._routes[route.dst] = route

    def del_route(self, route: Route) -> None:
        self._mutate("del_route", route)
        self._routes.pop(route.dst, None)

    def add_foreign_route(self, route: Route) -> None:
        """A route some other tool made (not recorded as our call)."""
        self._routes[route.dst] = route

    def close(self) -> None:
        pass


# -- change notifications ----------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One kernel notification, reduced to what decides whether to resync."""

    type: int
    ifindex: int = 0
    proto: int = 0
    family: int = 0  # nftables: the table's family (NFPROTO_IPV4 = 2)
    table: str = ""  # nftables: the table the change is in


def parse_changes(data: bytes) -> list[Change]:
    """Decode the fixed headers of the rtnetlink messages in one datagram."""
    out: list[Change] = []
    for mtype, _flags, _seq, body, end in messages(data):
        size = end - body
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and size >= IFINFOMSG.size:
            out.append(Change(mtype, ifindex=IFINFOMSG.unpack_from(data, body)[2]))
        elif mtype == RTM_DELADDR and size >= IFADDRMSG.size:
            out.append(Change(mtype, ifindex=IFADDRMSG.unpack_from(data, body)[4]))
        elif mtype == RTM_DELROUTE and size >= RTMSG.size:
            out.append(Change(mtype, proto=RTMSG.unpack_from(data, body)[5]))
        elif mtype in (RTM_NEWNEIGH, RTM_DELNEIGH) and size >= NDMSG.size:
            out.append(Change(mtype, ifindex=NDMSG.unpack_from(data, body)[1]))
    return out


# nftables notifications (nfnetlink): deletions in a table, so a table, chain,
# rule, set or element removed behind the daemon's back is repaired at once.
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_DELETIONS = frozenset({2, 5, 8, 11, 14})  # DELTABLE DELCHAIN DELRULE DELSET DELSETELEM
NFGENMSG_SIZE = 4  # family, version, res_id
NFTA_TABLE = 1  # the table name is attribute 1 of table/chain/rule/set/element messages


def parse_nft_changes(data: bytes) -> list[Change]:
    """Deletions in nftables tables, from one nfnetlink datagram."""
    out: list[Change] = []
    for mtype, _flags, _seq, body, end in messages(data):
        if mtype >> 8 != NFNL_SUBSYS_NFTABLES or mtype & 0xFF not in NFT_DELETIONS:
            continue
        if end - body < NFGENMSG_SIZE:
            continue
        name = parse_attrs(data, body + NFGENMSG_SIZE, end).get(NFTA_TABLE, b"")
        table = name.split(b"\0", 1)[0].decode(errors="replace")
        out.append(Change(mtype, family=data[body], table=table))
    return out


class ChangeMonitor:
    """Calls ``on_change(changes)`` for kernel notifications accepted by ``relevant``.

    Runs in its own daemon thread until stop().  A notification only triggers
    a resync; it is never applied directly, so a lost or reordered message
    costs at most one resync interval.  ``nftables=True`` listens to nftables
    deletions (parse_nft_changes) instead of rtnetlink.
    """

    def __init__(
        self,
        on_change: Callable[[list[Change]], None],
        relevant: Callable[[Change], bool],
        netns: str | None = None,
        nftables: bool = False,
    ) -> None:
        self._on_change = on_change
        self._relevant = relevant
        self._parse = parse_nft_changes if nftables else parse_changes
        self._stop = threading.Event()
        protocol = NETLINK_NETFILTER if nftables else socket.NETLINK_ROUTE
        with netns_scope(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
        if nftables:
            groups = 1 << (NFNLGRP_NFTABLES - 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, groups))
        self._thread = threading.Thread(target=self._run, name="netlink-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # the periodic resync still covers us; say so once
            if not self._stop.is_set():
                logging.getLogger("flannelish.kernel.netlink").warning(
                    "kernel change notifications stopped (%s); periodic resync only", exc
                )

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS: we missed messages, so resync everything
                    self._on_change([Change(0)])
                    continue
                if self._stop.is_set():
                    return
                raise
            changes = [c for c in self._parse(data) if self._relevant(c)]
            if changes:
                self._on_change(changes)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def is_ipv4(value: str) -> bool:
    try:
        return ip_address(value).version == 4
    except ValueError:
        return False
