"""Kinds of kernel objects the reconciler owns, each behind one small interface.

A :class:`Resource` knows how to list the objects *we own* of one kind, how
to create-or-replace one and how to delete one.  Objects are the frozen
records of :mod:`flannelish.kernel.netlink`; two objects with the same
:meth:`Resource.key` describe the same kernel slot (one route per
destination, one neighbour per IP, one FDB entry per MAC), so a differing
value under the same key is fixed in place with a replace.

Ownership rules (why dumps are filtered the way they are):

* neighbour and FDB entries: only on our own device, which nobody else uses;
* routes, and the nexthop objects ours go through: only those carrying our
  route protocol number, on any device, so a foreign one is never touched (a
  foreign nexthop holding the id one of ours would use makes the peer a
  conflict, like a foreign route) - with one exception, the takeover of a node
  flanneld (or an older flannelish) programmed: a foreign route that is the
  very route we would create except for its protocol (same destination,
  gateway, device and onlink flag) is replaced by ours in place
  (:meth:`RouteResource.create`); any other foreign route stays a conflict.

An :class:`Owner` (a backend, the nftables table) groups resources and plans
the objects one peer needs, or a :class:`Skip` with the reason it cannot.
These types live here, below both ``daemon/`` and ``backends/``, so neither
imports the other's internals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from flannelish.errors import KernelError
from flannelish.kernel.netlink import (
    AF_INET,
    ROUTE_PROTO,
    Fdb,
    Neigh,
    Netlink,
    NexthopExists,
    Op,
    Route,
    RouteExists,
    Tick,
    nexthop_id,
    replace,
)

if TYPE_CHECKING:
    from flannelish.subnet.lease import Lease

log = logging.getLogger("flannelish.kernel.resources")


class Resource(Protocol):
    """One kind of owned kernel object."""

    kind: ClassVar[str]  # short name used in logs ("neigh", "fdb", "route")
    record: ClassVar[type]  # the record class this resource handles

    def key(self, obj: Any) -> Hashable: ...
    # tick: called per entry parsed, so the reconciler can let events through
    # between slices of a long dump (ignored where a dump is small)
    def dump(self, tick: Tick | None = None) -> Sequence[Any]: ...
    def ensure(self, obj: Any) -> None: ...  # create, or replace our object under its key
    def create(self, obj: Any) -> None: ...  # no object of ours under its key: never replace
    def remove(self, obj: Any) -> None: ...


class NeighResource:
    """Permanent neighbour entries on our device(s) (each found by index at call time:
    VXLAN has one per family)."""

    kind: ClassVar[str] = "neigh"
    record: ClassVar[type] = Neigh

    def __init__(self, netlink: Netlink, *ifindexes: Callable[[], int | None]) -> None:
        self.netlink = netlink
        self._ifindexes = ifindexes

    def key(self, obj: Neigh) -> Hashable:
        return (obj.ifindex, obj.ip)

    def dump(self, tick: Tick | None = None) -> Sequence[Neigh]:
        return [n for index in _present(self._ifindexes) for n in self.netlink.neighs(index, tick)]

    def ensure(self, obj: Neigh) -> None:
        self.netlink.replace_neigh(obj)

    create = ensure  # every entry on our own device is ours

    def remove(self, obj: Neigh) -> None:
        self.netlink.del_neigh(obj)

    def netlink_op(self, obj: Neigh, action: str) -> Op:
        return ("del_neigh" if action == "remove" else "replace_neigh", obj)


class FdbResource:
    """VXLAN forwarding entries on our device(s)."""

    kind: ClassVar[str] = "fdb"
    record: ClassVar[type] = Fdb

    def __init__(self, netlink: Netlink, *ifindexes: Callable[[], int | None]) -> None:
        self.netlink = netlink
        self._ifindexes = ifindexes

    def key(self, obj: Fdb) -> Hashable:
        return (obj.ifindex, obj.mac)

    def dump(self, tick: Tick | None = None) -> Sequence[Fdb]:
        return [f for index in _present(self._ifindexes) for f in self.netlink.fdbs(index, tick)]

    def ensure(self, obj: Fdb) -> None:
        self.netlink.replace_fdb(obj)

    create = ensure  # every entry on our own device is ours

    def remove(self, obj: Fdb) -> None:
        self.netlink.del_fdb(obj)

    def netlink_op(self, obj: Fdb, action: str) -> Op:
        return ("del_fdb" if action == "remove" else "replace_fdb", obj)


class RouteResource:
    """Main-table routes marked with our route protocol, of the given families."""

    kind: ClassVar[str] = "route"
    record: ClassVar[type] = Route

    def __init__(
        self,
        netlink: Netlink,
        proto: int = ROUTE_PROTO,
        families: Sequence[int] = (AF_INET,),
        nexthops: bool = False,
    ) -> None:
        self.netlink = netlink
        self._proto = proto
        self._families = tuple(families)
        self._others: dict[Hashable, Route] = {}  # the last dump's foreign routes, by dst
        # Some of our routes go through nexthop objects (Route.nexthop): the last
        # dump's nexthops that are not ours, by id, are kept for blocked().
        self._nexthops = nexthops
        self._foreign_ids: set[int] = set()

    def key(self, obj: Route) -> Hashable:
        return obj.dst

    def dump(self, tick: Tick | None = None) -> Sequence[Route]:
        """Our routes; the others of the same listing are kept for :meth:`blocked`."""
        ours: list[Route] = []
        others: dict[Hashable, Route] = {}
        for family in self._families:
            for r in self.netlink.routes(None, family, tick):
                if r.proto == self._proto:
                    ours.append(r)
                else:
                    others[r.dst] = r
        self._others = others
        if self._nexthops:
            self._foreign_ids = self.netlink.foreign_nexthop_ids(self._proto)
        return ours

    def blocked(self, obj: Route, look_up: bool = False, new: bool = True) -> str | None:
        """What we may not replace that holds obj's slot ("a route to 10.244.3.0/24"),
        or None, so a peer can be skipped before anything of it is written.

        A foreign route to its destination, where obj is ``new`` (not ours in the
        kernel yet; a route identical to ours but for its protocol is taken over,
        not in the way); or, for a route through a nexthop, a foreign nexthop
        under that nexthop's id, whether or not the route is ours.  From the last
        dump, or (``look_up``) one look-up each.
        """
        nhid = nexthop_id(obj.dst) if obj.nexthop else 0
        if nhid and self._nexthop_taken(nhid, look_up):
            return f"nexthop id {nhid}"
        if not new:
            return None
        if look_up:
            try:
                there = self.netlink.route_to(obj.dst)
            except KernelError:  # `route get` refuses some entries: let create() decide
                return None
        elif not self._others:  # the common case: no foreign route to a peer subnet
            return None
        else:
            there = self._others.get(obj.dst)
        if there is None or there.proto == self._proto or _same_next_hop(there, obj):
            return None
        return f"a route to {obj.dst}"

    def _nexthop_taken(self, nhid: int, look_up: bool) -> bool:
        if not look_up:
            return nhid in self._foreign_ids
        there = self.netlink.nexthop(nhid)
        return there is not None and there.proto != self._proto

    def ensure(self, obj: Route) -> None:
        self.netlink.replace_route(obj)

    def create(self, obj: Route) -> None:
        """Create exclusively: a replace would overwrite whatever route has this
        destination (a connected route, the default route).

        RouteExists when a foreign route is in the way, except for the route we
        would create ourselves under another protocol (flanneld's, which carry
        protocol "boot", or ours from an older version): that one is replaced
        by ours in place (one RTM_GETROUTE, then a replace: traffic never
        stops and no second route to the destination is left).
        """
        try:
            self.netlink.add_route(obj)
        except RouteExists as exc:
            self._take_over(obj, exc)
        except NexthopExists as exc:
            self._adopt_nexthop(obj, exc)

    def _take_over(self, obj: Route, exists: RouteExists) -> None:
        """Replace the foreign route in the way if it is ours but for its protocol,
        else raise `exists`."""
        there = self.netlink.route_to(obj.dst)
        if there is None or there.proto == self._proto or not _same_next_hop(there, obj):
            raise exists
        self.netlink.replace_route(obj)
        log.info(
            "took over route",
            extra={"op": "adopt", "dst": str(obj.dst), "gateway": str(obj.gateway),
                   "oif": obj.oif, "old_proto": there.proto},
        )  # fmt: skip

    def _adopt_nexthop(self, obj: Route, exists: NexthopExists) -> None:
        """obj's nexthop id was taken.  Ours (its route deleted by hand) is rewritten
        with the route, as the create would have; a foreign one stays, and the route
        the same request added through it is deleted again (not the nexthop)."""
        there = self.netlink.nexthop(nexthop_id(obj.dst))
        route = self.netlink.route_to(obj.dst)
        if there is not None and there.proto == self._proto:
            if route is not None and route.proto != self._proto:
                self._take_over(obj, RouteExists(obj.dst))  # or RouteExists: left alone
            else:
                self.netlink.replace_route(obj)
            return
        if route is not None and route.proto == self._proto:
            self.netlink.del_route(replace(obj, nexthop=False))
        raise exists

    def remove(self, obj: Route) -> None:
        self.netlink.del_route(obj)

    def netlink_op(self, obj: Route, action: str) -> Op:
        return ({"create": "add_route", "ensure": "replace_route"}.get(action, "del_route"), obj)

    def settle(self, obj: Route, action: str, error: KernelError) -> KernelError | None:
        """After a batched `create` failed: the takeover :meth:`create` would have done."""
        if action != "create" or not isinstance(error, RouteExists | NexthopExists):
            return error
        try:
            if isinstance(error, RouteExists):
                self._take_over(obj, error)
            else:
                self._adopt_nexthop(obj, error)
        except KernelError as exc:
            return exc
        return None


def _same_next_hop(there: Route, obj: Route) -> bool:
    """The same destination, gateway, device and onlink flag (protocol and nexthop aside)."""
    return (there.dst, there.gateway, there.oif, there.onlink) == (
        obj.dst, obj.gateway, obj.oif, obj.onlink,
    )  # fmt: skip


def gateway_route(route: Route, nexthops: bool) -> Route:
    """`route`, through a nexthop object of ours where ``nexthops`` allows (IPv4 via a
    gateway, /30 or shorter: :func:`nexthop_id`).

    The kernel compares a new route's gateway with every route's on the same
    device and protocol (they share one bucket of its fib_info hash): 5000 peer
    routes cost it 0.63 s, against 0.2 s for nexthops and routes through them
    (docs/performance.md).  IPv6 routes stay plain: its table does not search.
    """
    if not nexthops or route.gateway is None or not nexthop_id(route.dst):
        return route
    return replace(route, nexthop=True)


# One write of the reconciler: (resource, object, action), the action being
# "create" (no object of ours under its key), "ensure" (create or replace ours)
# or "remove".
Step = tuple[Any, Any, str]


def write_steps(steps: Sequence[Step]) -> list[KernelError | None]:
    """Run the steps in order; per step the KernelError it raised, or None.

    Where every step's resource writes through the same :class:`Netlink`
    (``netlink_op``), all go to the kernel together, in as few datagrams as
    the socket allows (:meth:`Netlink.apply_many`): the kernel applies them in
    order but does not stop at a failed one.  Otherwise each runs on its own
    (the nftables set, WireGuard's UAPI), and a failure does not stop the rest
    either: callers that need a failure to stop a peer's later steps write
    them one :func:`write_steps` call at a time.
    """
    netlink = _shared_netlink(steps)
    if netlink is None:
        return [_write_one(res, obj, action) for res, obj, action in steps]
    errors = netlink.apply_many([res.netlink_op(obj, action) for res, obj, action in steps])
    for i, ((res, obj, action), error) in enumerate(zip(steps, errors, strict=True)):
        settle = getattr(res, "settle", None)
        if error is not None and settle is not None:
            errors[i] = settle(obj, action, error)
    return errors


def batchable(steps: Sequence[Step]) -> bool:
    """Whether :func:`write_steps` sends these steps to the kernel together."""
    return _shared_netlink(steps) is not None


def write_many(res: Resource, items: Sequence[tuple[Any, bool]]) -> list[KernelError | None]:
    """`res.create(obj)` (create True) or `res.ensure(obj)` for each item, batched where
    the resource can; per item the KernelError it raised, or None."""
    return write_steps([(res, obj, "create" if create else "ensure") for obj, create in items])


def _shared_netlink(steps: Sequence[Step]) -> Netlink | None:
    """The one Netlink every step's resource writes through (``netlink_op``), or None."""
    if not steps or any(not hasattr(res, "netlink_op") for res, _obj, _action in steps):
        return None
    netlink = steps[0][0].netlink
    if any(res.netlink is not netlink for res, _obj, _action in steps):
        return None
    return netlink


def _write_one(res: Resource, obj: Any, action: str) -> KernelError | None:
    try:
        getattr(res, action)(obj)
    except KernelError as exc:
        return exc
    return None


def _present(ifindexes: Sequence[Callable[[], int | None]]) -> list[int]:
    return [index for get in ifindexes if (index := get())]


@dataclass(frozen=True)
class Skip:
    """A peer that is not programmed, with the reason (logged once per change).

    ``kind`` is a short fixed category (a metrics label: few distinct values),
    ``reason`` the full sentence for logs and ``flannelish status``.
    """

    reason: str
    kind: str = "backend"


class Owner(Protocol):
    """Something that owns kernel objects: a backend, or later an nftables table."""

    def ensure_base(self) -> bool: ...
    def resources(self) -> Sequence[Resource]: ...
    def plan(self, peer: Lease) -> Sequence[Any] | Skip: ...
