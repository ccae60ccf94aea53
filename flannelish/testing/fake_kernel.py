"""FakeNetlink: an in-memory kernel implementing the Netlink protocol, for unit tests.

Just enough behaviour for the daemon, the backends and the reconciler: links
with indexes, addresses, one route per destination, neighbour and FDB
entries keyed like the kernel keys them.  ``calls`` lists every mutating call
as ``(op, object)`` in order, and ``fail_on`` makes the named ops raise
KernelError (to test error paths).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any, TypeVar

from flannelish.errors import KernelError
from flannelish.kernel.netlink import (
    AF_INET,
    BATCH_OPS,
    ROUTE_PROTO,
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
    replace,
    route_nexthop,
)

_T = TypeVar("_T")


@dataclass
class FakeNetlink:
    _links: dict[int, Link] = field(default_factory=dict)
    _addrs: set[Addr] = field(default_factory=set)
    _neighs: dict[tuple[int, IPAddress], Neigh] = field(default_factory=dict)
    _fdbs: dict[tuple[int, str, IPAddress], Fdb] = field(default_factory=dict)
    _routes: dict[IPNetwork, Route] = field(default_factory=dict)
    _nexthops: dict[int, Nexthop] = field(default_factory=dict)
    # Off by default: unit tests see plain routes unless they ask for nexthop objects.
    nexthop_support: bool = False
    blackholes: set[IPv4Network] = field(default_factory=set)
    default_oif: int | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail_on: set[str] = field(default_factory=set)
    _next_index: int = 100

    def _mutate(self, op: str, obj: Any) -> None:
        if op in self.fail_on:
            raise KernelError(f"netlink {op} failed for {obj}", "injected by the test")
        self.calls.append((op, obj))

    def _new_index(self) -> int:
        self._next_index += 1
        return self._next_index

    def _exclusive(self, op: str, name: str) -> None:
        if self.link(name) is not None:
            raise KernelError(f"netlink {op} failed for {name}", "File exists", errno.EEXIST)

    # -- test set-up (not recorded as calls) ------------------------------------------
    def add_link(self, name: str, mtu: int = 1500, kind: str = "", up: bool = True) -> Link:
        index = self._new_index()
        mac = f"02:00:00:00:{index // 256:02x}:{index % 256:02x}"
        link = Link(index, name, kind, mac, mtu, up)
        self._links[link.index] = link
        return link

    def append_fdb(self, fdb: Fdb) -> None:
        """Like `bridge fdb append`: a second dst for one MAC (what a stray tool may leave)."""
        self._fdbs[(fdb.ifindex, fdb.mac, fdb.dst)] = fdb

    def add_foreign_route(self, route: Route) -> None:
        """A route some other tool made (not recorded as our call)."""
        self._routes[route.dst] = route

    # -- links ------------------------------------------------------------------------
    def links(self) -> list[Link]:
        return list(self._links.values())

    def link(self, name: str) -> Link | None:
        return next((x for x in self._links.values() if x.name == name), None)

    def link_by_index(self, index: int) -> Link | None:
        return self._links.get(index)

    def create_vxlan(self, spec: VxlanSpec) -> Link:
        self._exclusive("vxlan add", spec.name)
        self._mutate("create_vxlan", spec.name)
        info = VxlanInfo(spec.vni, spec.local, spec.link, spec.port, spec.learning)
        link = Link(self._new_index(), spec.name, "vxlan", spec.mac, spec.mtu, False, info)
        self._links[link.index] = link
        return link

    def create_bridge(self, name: str, mtu: int, mac: str) -> Link:
        self._exclusive("bridge add", name)
        self._mutate("create_bridge", name)
        link = Link(self._new_index(), name, "bridge", mac, mtu, False)
        self._links[link.index] = link
        return link

    def create_veth(
        self, name: str, peer: str, peer_netns_fd: int, mtu: int, mac: str | None = None
    ) -> Link:
        """Only this end exists here: the peer lives in another (not modelled) namespace."""
        self._exclusive("veth add", name)
        self._mutate("create_veth", (name, peer))
        index = self._new_index()
        link = Link(index, name, "veth", f"02:00:00:01:{index // 256:02x}:{index % 256:02x}",
                    mtu, False)  # fmt: skip
        self._links[index] = link
        return link

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
        self._mutate("set_link", (index, mtu, mac, up))
        link = self._links[index]
        changes = {"mtu": mtu, "mac": mac, "up": up, "master": master, "promisc": promisc}
        self._links[index] = replace(link, **{k: v for k, v in changes.items() if v is not None})

    def set_hairpin(self, index: int, on: bool) -> None:
        self._mutate("set_hairpin", (index, on))

    def delete_link(self, index: int) -> None:
        self._mutate("delete_link", index)
        self._links.pop(index, None)
        self._addrs = {a for a in self._addrs if a.index != index}
        self._neighs = {k: v for k, v in self._neighs.items() if v.ifindex != index}
        self._fdbs = {k: v for k, v in self._fdbs.items() if v.ifindex != index}
        self._routes = {k: v for k, v in self._routes.items() if v.oif != index}

    # -- addresses --------------------------------------------------------------------
    def addrs(self, index: int | None = None, family: int = AF_INET) -> list[Addr]:
        version = {0: None, AF_INET: 4}.get(family, 6)
        return [
            a
            for a in self._addrs
            if (index is None or a.index == index)
            and (version is None or a.address.version == version)
        ]

    def add_addr(self, addr: Addr) -> None:
        self._mutate("add_addr", addr)
        self._addrs.add(addr)

    def del_addr(self, addr: Addr) -> None:
        self._mutate("del_addr", addr)
        self._addrs.discard(addr)

    # -- routes -----------------------------------------------------------------------
    def routes(
        self, proto: int | None = ROUTE_PROTO, family: int = AF_INET, tick: Tick | None = None
    ) -> list[Route]:
        version = {0: None, AF_INET: 4}.get(family, 6)
        return _ticked(
            [
                r
                for r in self._routes.values()
                if (proto is None or r.proto == proto)
                and (version is None or r.dst.version == version)
            ],
            tick,
        )

    def route_to(self, dst: IPNetwork) -> Route | None:
        return self._routes.get(dst)

    def route_lookup(self, ip: IPAddress) -> tuple[int, IPAddress | None] | None:
        hits = [r for r in self._routes.values() if r.dst.version == ip.version and ip in r.dst]
        if not hits:
            return (self.default_oif, None) if self.default_oif is not None else None
        return max(hits, key=lambda r: r.dst.prefixlen).oif, None

    def replace_blackhole(self, dst: IPv4Network) -> None:
        self._mutate("replace_blackhole", dst)
        self.blackholes.add(dst)

    def del_blackhole(self, dst: IPv4Network) -> None:
        self._mutate("del_blackhole", dst)
        self.blackholes.discard(dst)

    def default_route_oif(self, family: int = AF_INET) -> int | None:
        return self.default_oif

    def add_route(self, route: Route) -> None:
        """A route with ``nexthop`` adds its nexthop object first (NexthopExists if
        the id is taken; unlike the kernel's batch, the route is then not added)."""
        self._mutate("add_route", route)
        if route.nexthop:
            nexthop = route_nexthop(route)
            if nexthop.id in self._nexthops:
                raise NexthopExists(nexthop.id)
            self._nexthops[nexthop.id] = nexthop
        # Like the kernel: any route to the same destination (ours or not) blocks it.
        if route.dst in self._routes:
            raise RouteExists(route.dst)
        self._routes[route.dst] = route

    def replace_route(self, route: Route) -> None:
        self._mutate("replace_route", route)
        if route.nexthop:
            nexthop = route_nexthop(route)
            self._nexthops[nexthop.id] = nexthop
        self._routes[route.dst] = route

    def del_route(self, route: Route) -> None:
        self._mutate("del_route", route)
        self._routes.pop(route.dst, None)
        if route.nexthop:
            self._nexthops.pop(route_nexthop(route).id, None)

    # -- nexthop objects ----------------------------------------------------------------
    def nexthops_usable(self) -> bool:
        return self.nexthop_support

    def nexthops(self, proto: int | None = ROUTE_PROTO, tick: Tick | None = None) -> list[Nexthop]:
        found = [n for n in self._nexthops.values() if proto is None or n.proto == proto]
        return _ticked(found, tick)

    def nexthop(self, nhid: int) -> Nexthop | None:
        return self._nexthops.get(nhid)

    def foreign_nexthop_ids(self, proto: int = ROUTE_PROTO) -> set[int]:
        return {n.id for n in self._nexthops.values() if n.proto != proto}

    def del_nexthop(self, nexthop: Nexthop) -> None:
        """Like the kernel: the routes through it go with it."""
        self._mutate("del_nexthop", nexthop)
        self._nexthops.pop(nexthop.id, None)
        for dst in [
            d for d, r in self._routes.items() if r.nexthop and nexthop_id(d) == nexthop.id
        ]:
            del self._routes[dst]

    # -- neighbours and FDB entries ---------------------------------------------------
    def neighs(self, ifindex: int, tick: Tick | None = None) -> list[Neigh]:
        return _ticked([n for n in self._neighs.values() if n.ifindex == ifindex], tick)

    def replace_neigh(self, neigh: Neigh) -> None:
        self._mutate("replace_neigh", neigh)
        self._neighs[(neigh.ifindex, neigh.ip)] = neigh

    def del_neigh(self, neigh: Neigh) -> None:
        self._mutate("del_neigh", neigh)
        self._neighs.pop((neigh.ifindex, neigh.ip), None)

    def fdbs(self, ifindex: int, tick: Tick | None = None) -> list[Fdb]:
        return _ticked([f for f in self._fdbs.values() if f.ifindex == ifindex], tick)

    def replace_fdb(self, fdb: Fdb) -> None:
        self._mutate("replace_fdb", fdb)
        # Like the kernel: replace keys on the MAC, so a new dst overwrites the old one.
        self._fdbs = {k: v for k, v in self._fdbs.items() if k[:2] != (fdb.ifindex, fdb.mac)}
        self._fdbs[(fdb.ifindex, fdb.mac, fdb.dst)] = fdb

    def del_fdb(self, fdb: Fdb) -> None:
        self._mutate("del_fdb", fdb)
        self._fdbs.pop((fdb.ifindex, fdb.mac, fdb.dst), None)

    def apply_many(self, ops: Sequence[Op]) -> list[KernelError | None]:
        """Each op by its own method, in order; a failure is recorded, not raised."""
        results: list[KernelError | None] = []
        for op, obj in ops:
            if op not in BATCH_OPS:
                raise ValueError(f"not a batchable write: {op}")
            try:
                getattr(self, op)(obj)
            except KernelError as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    # -- sysctls ----------------------------------------------------------------------
    def sysctl(self, key: str, value: str) -> None:
        self._mutate("sysctl", (key, value))
        self.sysctls[key] = value

    def close(self) -> None:
        pass


if TYPE_CHECKING:  # mypy proves that FakeNetlink implements the whole interface
    _implements: type[Netlink] = FakeNetlink


def _ticked(entries: list[_T], tick: Tick | None) -> list[_T]:
    """Like RawNetlink: the dump's caller is ticked once per entry parsed."""
    if tick is not None:
        for _ in entries:
            tick()
    return entries
