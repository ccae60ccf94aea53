"""The kernel interface: plain records and the one :class:`Netlink` protocol.

Everything flannelish does to the kernel's network state goes through a
:class:`Netlink`: the daemon (interface choice, backends, reconciler
resources) and the CNI plugin (bridge, veth pair, addresses, routes,
sysctls).  Implementations:

* :class:`flannelish.kernel.rawnetlink.RawNetlink`: the real kernel, through
  the hand-packed rtnetlink messages of :mod:`flannelish.kernel.rtnl`;
* :class:`flannelish.testing.fake_kernel.FakeNetlink`: an in-memory kernel
  for root-free unit tests.

Every failure is a :class:`~flannelish.errors.KernelError` naming the
operation, with the kernel's ``errno`` when it refused a request.  Deletes
treat "already gone" as success; ``replace_*`` creates or overwrites, so
repeating it is harmless; ``add_route`` and ``create_*`` create exclusively
(errno EEXIST when the slot is taken; for a route, :class:`RouteExists`).

Routes we own carry :data:`ROUTE_PROTO` (unused in /etc/iproute2/rt_protos),
so a dump filtered by it never returns a route somebody else made.

Standard library only, and cheap to import: the CNI plugin loads this on
every call, which is why the records are not dataclasses (see :func:`record`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from operator import attrgetter
from typing import Any, Protocol, TypeVar, dataclass_transform

from flannelish.errors import KernelError

ROUTE_PROTO = 0x46  # "F": marks routes flannelish owns

# Called once per entry a dump parses: the reconciler's full pass lets lease
# events through between slices of a long dump (flannelish.daemon.reconciler).
Tick = Callable[[], object]
# --ip-blackhole-route: the lowest preference, so a connected route to the same
# subnet (the CNI bridge's) always wins, even when it is added after ours.
BLACKHOLE_METRIC = 0xFFFFFFFF
RTPROT_BOOT = 3  # what `ip route add` uses; the CNI plugin's pod routes carry it
MAIN_TABLE = 254
AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_R = TypeVar("_R")


@dataclass_transform(frozen_default=True)
def record(cls: type[_R]) -> type[_R]:
    """Make `cls` a frozen value record: what ``@dataclass(frozen=True, slots=True)`` gives.

    Fields are the class annotations, in order; defaults are class
    attributes.  Records compare and hash by their fields.  Slots, not an
    instance dict: the daemon holds three records per peer (route, neighbour,
    FDB entry) and a full pass builds as many again, so at 5000 peers the
    dicts cost several MB.  Not dataclasses because importing that module (it
    pulls in inspect and ast) would cost the CNI plugin several milliseconds
    on every call.
    """
    names = tuple(cls.__annotations__)
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    skip = {*names, "__dict__", "__weakref__"}
    namespace = {k: v for k, v in cls.__dict__.items() if k not in skip}
    namespace["__slots__"] = names
    setters: list[Callable[[Any, Any], None]] = []
    # Every field at once, in C (hash and == run ~100000 times per 5000-peer pass).
    values = attrgetter(*names) if len(names) > 1 else (lambda obj: (getattr(obj, names[0]),))

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) != len(names):
            args = _bind(cls.__name__, names, defaults, args, kwargs)
        for set_field, value in zip(setters, args, strict=True):
            set_field(self, value)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise AttributeError(f"{cls.__name__} is frozen: cannot set {name!r}")

    def __delattr__(self: Any, name: str) -> None:
        raise AttributeError(f"{cls.__name__} is frozen: cannot delete {name!r}")

    def __eq__(self: Any, other: Any) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(values(self) == values(other))

    def __hash__(self: Any) -> int:
        return hash(values(self))

    def __repr__(self: Any) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{cls.__name__}({fields})"

    def __getstate__(self: Any) -> tuple:  # copy and pickle: no __dict__ to copy
        return tuple(values(self))

    def __setstate__(self: Any, state: tuple) -> None:
        for set_field, value in zip(setters, state, strict=True):
            set_field(self, value)

    for method in (__init__, __setattr__, __delattr__, __eq__, __hash__, __repr__,
                   __getstate__, __setstate__):  # fmt: skip
        namespace[method.__name__] = method
    namespace["_fields"] = names  # field names, for logging
    new: Any = type(cls.__name__, cls.__bases__, namespace)
    # The slots' own descriptors set a field without going through the frozen __setattr__.
    setters.extend(getattr(new, n).__set__ for n in names)
    return new


def _bind(
    cls: str, names: tuple[str, ...], defaults: dict[str, Any], args: tuple, kwargs: dict
) -> tuple:
    if len(args) > len(names):
        raise TypeError(f"{cls}() takes {len(names)} arguments, got {len(args)}")
    values = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name not in names or name in values:
            raise TypeError(f"{cls}() got an unexpected or repeated argument {name!r}")
        values[name] = value
    missing = [n for n in names if n not in values and n not in defaults]
    if missing:
        raise TypeError(f"{cls}() missing arguments: {', '.join(missing)}")
    return tuple(values[n] if n in values else defaults[n] for n in names)


def replace(obj: _R, **changes: Any) -> _R:
    """A copy of record `obj` with some fields changed (like dataclasses.replace)."""
    return type(obj)(**{**{n: getattr(obj, n) for n in record_fields(obj)}, **changes})


def record_fields(obj: Any) -> tuple[str, ...]:
    """The field names of a record, in order."""
    return tuple(getattr(obj, "_fields"))  # noqa: B009 - set by @record, unknown to mypy


# -- records ---------------------------------------------------------------------


@record
class VxlanInfo:
    vni: int
    local: IPAddress | None  # IPv4 (IFLA_VXLAN_LOCAL) or IPv6 (IFLA_VXLAN_LOCAL6)
    link: int | None  # index of the underlay device
    port: int
    learning: bool = False


@record
class Link:
    index: int
    name: str
    kind: str  # "" for links without linkinfo (lo, physical NICs)
    mac: str
    mtu: int
    up: bool
    vxlan: VxlanInfo | None = None
    master: int = 0  # index of the bridge this link is a port of (0: none)
    promisc: bool = False
    peer_index: int = 0  # IFLA_LINK: for a veth, the peer's index (in its own namespace)


@record
class Addr:
    index: int
    address: IPAddress
    prefixlen: int


@record
class Neigh:
    """A permanent IPv4 or IPv6 neighbour entry (ip neigh ... nud permanent)."""

    ifindex: int
    ip: IPAddress
    mac: str


@record
class Fdb:
    """A VXLAN forwarding entry (bridge fdb ... dst <ip> self permanent)."""

    ifindex: int
    mac: str
    dst: IPAddress  # the remote VTEP, IPv4 or IPv6


@record
class Route:
    """A unicast route.

    ``scope`` None is the usual scope (universe with a gateway, link without)
    and ``priority`` None is no metric; dumps report them the same way, so a
    route read back equals the one written (IPv6 routes written without a
    metric read back with the kernel's default, 1024).
    """

    dst: IPNetwork
    gateway: IPAddress | None
    oif: int
    onlink: bool = False
    proto: int = ROUTE_PROTO
    table: int = MAIN_TABLE
    scope: int | None = None
    priority: int | None = None
    # Through a nexthop object of ours (id nexthop_id(dst), same gateway, device
    # and onlink flag), written and deleted with the route.  A dump still shows
    # the gateway, device and flag (net.ipv4.nexthop_compat_mode, on by default),
    # so a route read back equals the one written either way.
    nexthop: bool = False


@record
class Nexthop:
    """A nexthop object (``ip nexthop add id N via G dev D [onlink]``), ours by protocol.

    Ours are written with the route that goes through them (``Route.nexthop``;
    why: docs/performance.md, "Routes through nexthop objects").  The id comes
    from the route's destination (:func:`nexthop_id`), so it is known without
    asking the kernel.
    """

    id: int
    gateway: IPAddress | None  # None: a foreign nexthop without one (a group, a blackhole)
    oif: int
    onlink: bool = False
    proto: int = ROUTE_PROTO


# Our nexthop ids: bit 30 set, then the subnet's address without its last two
# bits (every subnet of /30 or shorter is aligned to 4): one id per subnet, never
# the same for two subnets of one length (all peers of a network share one).
NEXTHOP_ID_BASE = 1 << 30


def nexthop_id(dst: IPNetwork) -> int:
    """The nexthop id of our route to `dst`; 0 where that route has none (IPv6, /31, /32)."""
    if dst.version != 4 or dst.prefixlen > 30:
        return 0
    return NEXTHOP_ID_BASE | int(dst.network_address) >> 2


def route_nexthop(route: Route) -> Nexthop:
    """The nexthop object a route with ``nexthop`` set goes through."""
    assert route.gateway is not None  # only gateway routes go through one
    return Nexthop(nexthop_id(route.dst), route.gateway, route.oif, route.onlink, route.proto)


def nexthop_subnet_address(nhid: int) -> IPv4Address | None:
    """The subnet address an id of ours was made from (:func:`nexthop_id`), or None."""
    if nhid >> 30 != 1:
        return None
    return IPv4Address((nhid & (NEXTHOP_ID_BASE - 1)) << 2)


@record
class VxlanSpec:
    """What `create_vxlan` builds."""

    name: str
    vni: int
    local: IPAddress  # its family is the tunnel's (outer) family
    link: int
    port: int
    mac: str
    mtu: int
    learning: bool = False
    gbp: bool = False


class SlotTaken(KernelError):
    """An exclusive create found its slot taken (perhaps not by us); ``what`` names the
    object in the way ("a route to 10.244.3.0/24")."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} already exists", errno=errno.EEXIST)
        self.what = what


class RouteExists(SlotTaken):
    """``add_route`` found a route to that destination in the table (perhaps not ours)."""

    def __init__(self, dst: IPNetwork) -> None:
        super().__init__(f"a route to {dst}")
        self.dst = dst


class NexthopExists(SlotTaken):
    """``add_route`` found a nexthop under the id of the route's own (perhaps not ours)."""

    def __init__(self, nhid: int) -> None:
        super().__init__(f"nexthop id {nhid}")
        self.nhid = nhid


# -- the interface ---------------------------------------------------------------

# One kernel write for Netlink.apply_many: the name of the method that makes it
# and that method's record, e.g. ("add_route", Route(...)).
Op = tuple[str, Any]
BATCH_OPS = frozenset(
    {"replace_neigh", "del_neigh", "replace_fdb", "del_fdb", "add_route", "replace_route",
     "del_route"}
)  # fmt: skip


class Netlink(Protocol):
    """The kernel operations flannelish needs, in one network namespace."""

    # links
    def links(self) -> list[Link]: ...
    def link(self, name: str) -> Link | None: ...
    def link_by_index(self, index: int) -> Link | None: ...
    def create_vxlan(self, spec: VxlanSpec) -> Link: ...
    def create_bridge(self, name: str, mtu: int, mac: str) -> Link: ...
    def create_veth(
        self, name: str, peer: str, peer_netns_fd: int, mtu: int, mac: str | None = None
    ) -> Link: ...
    def set_link(
        self,
        index: int,
        *,
        mtu: int | None = None,
        mac: str | None = None,
        up: bool | None = None,
        master: int | None = None,
        promisc: bool | None = None,
    ) -> None: ...
    def set_hairpin(self, index: int, on: bool) -> None: ...
    def delete_link(self, index: int) -> None: ...

    # addresses (family: AF_INET, AF_INET6 or 0 for both)
    def addrs(self, index: int | None = None, family: int = AF_INET) -> list[Addr]: ...
    def add_addr(self, addr: Addr) -> None: ...
    def del_addr(self, addr: Addr) -> None: ...

    # routes in the main table (proto None: every protocol's)
    # (tick: called per entry parsed, see Tick)
    def routes(
        self, proto: int | None = ROUTE_PROTO, family: int = AF_INET, tick: Tick | None = None
    ) -> list[Route]: ...
    def route_to(self, dst: IPNetwork) -> Route | None: ...  # exactly dst, any protocol
    # `ip route get IP`, either family: (outgoing ifindex, preferred source)
    def route_lookup(self, ip: IPAddress) -> tuple[int, IPAddress | None] | None: ...
    def replace_blackhole(self, dst: IPv4Network) -> None: ...  # ours, lowest preference
    def del_blackhole(self, dst: IPv4Network) -> None: ...
    def default_route_oif(self, family: int = AF_INET) -> int | None: ...
    # RouteExists, or NexthopExists (its nexthop's id is taken): never replaces
    def add_route(self, route: Route) -> None: ...
    def replace_route(self, route: Route) -> None: ...
    def del_route(self, route: Route) -> None: ...

    # nexthop objects (proto None: every protocol's; a route with `nexthop` set
    # writes and deletes its own); nexthops_usable: the kernel has them and
    # dumps a nexthop route with its gateway (compat mode)
    def nexthops_usable(self) -> bool: ...
    def nexthops(
        self, proto: int | None = ROUTE_PROTO, tick: Tick | None = None
    ) -> list[Nexthop]: ...
    def foreign_nexthop_ids(self, proto: int = ROUTE_PROTO) -> set[int]: ...  # not proto's
    def nexthop(self, nhid: int) -> Nexthop | None: ...  # any protocol's
    def del_nexthop(self, nexthop: Nexthop) -> None: ...

    # permanent neighbour and VXLAN FDB entries of one device
    def neighs(self, ifindex: int, tick: Tick | None = None) -> list[Neigh]: ...
    def replace_neigh(self, neigh: Neigh) -> None: ...
    def del_neigh(self, neigh: Neigh) -> None: ...
    def fdbs(self, ifindex: int, tick: Tick | None = None) -> list[Fdb]: ...
    def replace_fdb(self, fdb: Fdb) -> None: ...
    def del_fdb(self, fdb: Fdb) -> None: ...

    # Many writes (ops of BATCH_OPS) at once, in order, each as its method makes it
    # (RawNetlink: packed into few datagrams).  One failure does not stop the
    # others; the result per op is what its method would have raised, or None.
    def apply_many(self, ops: Sequence[Op]) -> list[KernelError | None]: ...

    # /proc/sys/<key> in this namespace; a key that does not exist is skipped
    def sysctl(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...
