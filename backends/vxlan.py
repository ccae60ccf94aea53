"""The VXLAN backend: one device per family, and per peer and family one neighbour,
FDB entry and route.

Design (docs/flannel-compat.md §7, with the upstream bugs listed there fixed):

* Device ``flannel.<VNI>``: vxlan with local = our address on the external
  interface, dev = that interface, dstport from config or 8472, learning off,
  no l2miss/l3miss (all state is programmed, nothing is learned, so a daemon
  restart leaves the data path intact).  MTU = (Backend MTU or interface MTU)
  - 50, applied to an existing device too (Flannel never updates it).
* The VTEP MAC is stable: adopted from an existing compatible device, else
  read from a small file next to subnet.env, else random (locally
  administered unicast) and saved there.  A device rebuilt after deletion
  gets the same MAC, so peers' FDB entries stay valid and the lease needs
  no change.
* Per peer S (subnet), P (PublicIP), M (VtepMAC): neigh S.0 → M (permanent),
  fdb M → dst P, route S via S.0 dev flannel.N onlink, applied in that order
  by the reconciler; the route goes last so the kernel never ARPs for S.0.
* The address ``<our subnet>.0/32`` marks the device as the gateway for our
  subnet's VTEP; any other address inside the network is removed.
* DirectRouting (off by default): a peer whose PublicIP is on-link on the
  external interface (inside one of its prefixes: same L2, no gateway; the
  helper host-gw uses, flannelish.backends.onlink) gets only the plain route
  ``S via P dev <ext>`` (our route protocol, like every route we own) and no
  neighbour or FDB entry; every other peer keeps the tunnel.  The choice is
  made per peer on every pass, from prefixes re-read on every base check, so
  the reconciler's diff removes the other kind's entries when a peer changes
  side (the route is replaced in place: same key).  Flannel instead runs
  ``ip route get P`` per event and again on removal, so a topology change in
  between deletes the wrong kind of entry.  The option is the one backend
  setting applied live (:meth:`VxlanBackend.reconfigure`); the others shape
  the device and need a restart.
* IPv6 (dual-stack or IPv6-only networks): the same on ``flannel-v6.<VNI>``
  (backends/vxlan_device.py), whose tunnel runs over our IPv6 underlay
  address (MTU: underlay - 70), its own stable MAC (``BackendV6Data``), the
  address ``<our v6 subnet>::/128``; per peer: neigh ``S6::`` → M6, fdb M6 →
  PublicIPv6, route ``S6 via S6:: dev flannel-v6.N onlink`` (metric 1024, what
  the kernel reports for an IPv6 route written without one).  DirectRouting
  applies per family.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import fields, replace
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any

from flannelish.backends.base import Backend, BackendContext
from flannelish.backends.onlink import OnLink
from flannelish.backends.vxlan_device import (
    DEFAULT_PORT,
    LIVE_OPTIONS,
    OPTION_NAMES,
    VxlanDevice,
    VxlanOptions,
)

from flannelish.errors import KernelError
from flannelish.kernel.netlink import Fdb, Neigh, Route
from flannelish.kernel.resources import (
    FdbResource,
    NeighResource,
    Resource,
    RouteResource,
    Skip,
    gateway_route,
)
from flannelish.subnet.keys import overlap
from flannelish.subnet.lease import Lease, LeaseAttrs, LeaseDecodeError, normalize_mac

log = logging.getLogger("flannelish.vxlan")

__all__ = ["DEFAULT_PORT", "VxlanBackend", "VxlanOptions"]

V6_METRIC = 1024  # the kernel's default metric of an IPv6 route


class VxlanBackend(Backend):
    backend_type = "vxlan"

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(ctx)
        self.options = VxlanOptions.parse(getattr(ctx.network, "backend", None))
        self.port = self.options.port or DEFAULT_PORT
        config, ext = ctx.network, ctx.ext
        underlay = (ext.name, ext.index, ext.mtu)
        # Behind NAT the public IP is not ours; the tunnel must use the interface address.
        self.v4: VxlanDevice | None = None
        self.v6: VxlanDevice | None = None
        if getattr(config, "enable_ipv4", True):
            self.v4 = VxlanDevice(ctx.netlink, self.options, ext.address, underlay, ctx.state_dir)
        if getattr(config, "enable_ipv6", False):
            local6 = ext.address6 or ext.public_ipv6
            if local6 is None:
                raise KernelError(f"interface {ext.name} has no IPv6 address for flannel-v6")
            self.v6 = VxlanDevice(ctx.netlink, self.options, local6, underlay, ctx.state_dir)
        self.devices = [d for d in (self.v4, self.v6) if d is not None]
        primary = self.devices[0]
        self.name = primary.name  # the device status and doctor report first
        self.local = primary.local
        self.lease: Lease | None = None
        self._onlink = OnLink(ctx.netlink, ext.index)
        self._paths: dict[Any, str] = {}  # (peer, family) -> "direct" | "vxlan" (DirectRouting)
        families = [d.family for d in self.devices]
        # IPv4 peer routes through nexthop objects where the kernel has them (see gateway_route).
        self.nexthops = self.v4 is not None and ctx.netlink.nexthops_usable()
        self._resources: list[Resource] = [
            NeighResource(ctx.netlink, lambda: self.index, lambda: self.index6),
            FdbResource(ctx.netlink, lambda: self.index, lambda: self.index6),
            RouteResource(ctx.netlink, families=families, nexthops=self.nexthops),
        ]

    @property
    def mtu(self) -> int:
        """The pods' MTU: the smaller tunnel's in dual-stack (pods get one MTU)."""
        return min(d.mtu for d in self.devices)

    @property
    def mac(self) -> str:
        return self.devices[0].mac

    @property
    def index(self) -> int | None:
        return self.v4.index if self.v4 is not None else None

    @property
    def index6(self) -> int | None:
        return self.v6.index if self.v6 is not None else None

    @property
    def device_indexes(self) -> set[int]:
        return {d.index for d in self.devices if d.index is not None}

    @property
    def _nl(self) -> Any:
        return self.ctx.netlink

    # -- devices -----------------------------------------------------------------
    def setup(self) -> None:
        if self.options.direct_routing:
            self._onlink.refresh()
        for dev in self.devices:
            dev.setup()

    def lease_attrs(self) -> LeaseAttrs:
        ext = self.ctx.ext
        v6 = self.v6
        return LeaseAttrs(
            public_ip=ext.public_ip,
            backend_type=self.backend_type,
            backend_data={"VNI": self.options.vni, "VtepMAC": self.v4.mac} if self.v4 else None,
            public_ipv6=ext.public_ipv6 if v6 is not None else None,
            backend_v6_data={"VNI": self.options.vni, "VtepMAC": v6.mac} if v6 else None,
        )

    def _subnets(self) -> list[tuple[VxlanDevice, Any, Any]]:
        key = self.lease.key if self.lease is not None else None
        config = self.ctx.network
        out: list[tuple[VxlanDevice, Any, Any]] = []
        if self.v4 is not None:
            out.append((self.v4, key.v4 if key else None, getattr(config, "network", None)))
        if self.v6 is not None:
            out.append((self.v6, key.v6 if key else None, getattr(config, "ipv6_network", None)))
        return out

    def bind_lease(self, lease: Lease) -> None:
        self.lease = lease
        for dev, subnet, network in self._subnets():
            dev.ensure_address(subnet, network)
            link = self._nl.link(dev.name)
            if link is None:
                raise KernelError(f"device {dev.name} vanished during start-up")
            dev.fix_link(link, up=True)

    def ensure_base(self) -> bool:
        rebuilt = False
        for dev, subnet, network in self._subnets():
            rebuilt |= dev.ensure(subnet, network)
        if self.options.direct_routing:
            self._onlink.refresh()  # the underlay may have been readdressed
        return rebuilt

    # -- live reconfiguration ------------------------------------------------------
    def reconfigure(self, network: Any) -> list[str]:
        """Apply DirectRouting from a changed config; name the options needing a restart.

        Raises ConfigError if the new Backend section is invalid (nothing applied).
        """
        new = VxlanOptions.parse(getattr(network, "backend", None))
        restart = [
            OPTION_NAMES[f.name]
            for f in fields(VxlanOptions)
            if f.name not in LIVE_OPTIONS
            and self._effective(new, f.name) != self._effective(self.options, f.name)
        ]
        if new.direct_routing != self.options.direct_routing:
            if new.direct_routing:
                self._onlink.refresh()  # before the first pass that plans with it
            self._paths.clear()
            self.options = replace(self.options, direct_routing=new.direct_routing)
            log.info(
                "DirectRouting turned %s",
                "on" if new.direct_routing else "off",
                extra={"direct_routing": new.direct_routing, "underlay": self.ctx.ext.name},
            )
        return restart

    def _effective(self, options: VxlanOptions, name: str) -> Any:
        """An option's value as the device sees it (Port 0 is 8472, no MTU is the underlay's)."""
        if name == "port":
            return options.port or DEFAULT_PORT
        if name == "mtu":
            return options.mtu or self.ctx.ext.mtu
        return getattr(options, name)

    def direct(self, ip: IPv4Address | IPv6Address) -> bool:
        """Would a peer with this public address get a plain route (DirectRouting, on-link)?"""
        return self.options.direct_routing and ip in self._onlink

    # -- peers -------------------------------------------------------------------
    def resources(self) -> Sequence[Resource]:
        return self._resources

    def validate(self, peer: Lease) -> Skip | None:
        attrs = peer.attrs
        if attrs.backend_type != self.backend_type:
            return Skip(
                f"backend type {attrs.backend_type or 'none'!r}, we use vxlan", "backend-type"
            )
        ext = self.ctx.ext
        if self.v4 is not None and peer.key.v4 is not None:
            skip = _check_mac(attrs.backend_data, "VtepMAC", self.v4.mac)
            if skip is not None:
                return skip
            if attrs.public_ip in (ext.public_ip, self.v4.local):
                return Skip(f"PublicIP {attrs.public_ip} is our own", "public-ip")
        if self.v6 is not None and peer.key.v6 is not None:
            skip = _check_mac(attrs.backend_v6_data, "BackendV6Data VtepMAC", self.v6.mac)
            if skip is not None:
                return skip
            if attrs.public_ipv6 is None:
                return Skip("lease has no PublicIPv6", "public-ip")
            if attrs.public_ipv6 in (ext.public_ipv6, self.v6.local):
                return Skip(f"PublicIPv6 {attrs.public_ipv6} is our own", "public-ip")
        return None

    def claims(self, peer: Lease) -> Sequence[Hashable]:
        # One FDB entry per MAC and device: a second peer with the same MAC would steal it.
        out: list[Hashable] = []
        if self.v4 is not None and peer.key.v4 is not None:
            out.append(("vtep-mac", peer.attrs.vtep_mac))
        if self.v6 is not None and peer.key.v6 is not None:
            out.append(("vtep-mac-v6", _mac(peer.attrs.backend_v6_data)))
        return tuple(out)

    def plan(self, peer: Lease) -> Sequence[Any] | Skip:
        skip = self.validate(peer)
        if skip is not None:
            return skip
        key, attrs = peer.key, peer.attrs
        own = self.lease.key if self.lease is not None else None
        out: list[Any] = []
        for dev, subnet, mine, data, remote in (
            (self.v4, key.v4, own.v4 if own else None, attrs.backend_data, attrs.public_ip),
            (self.v6, key.v6, own.v6 if own else None, attrs.backend_v6_data, attrs.public_ipv6),
        ):
            if dev is None or subnet is None or remote is None:
                continue
            if mine is not None and overlap(subnet, mine):
                return Skip(f"subnet overlaps our lease {mine}", "overlap")
            metric = V6_METRIC if isinstance(subnet, IPv6Network) else None
            if self.direct(remote):
                self._note_path(peer, dev, remote, "direct")
                direct = Route(subnet, remote, self.ctx.ext.index, priority=metric)
                out.append(gateway_route(direct, self.nexthops))
                continue
            if dev.index is None:
                return Skip(f"device {dev.name} not present", "device")
            if self.options.direct_routing:
                self._note_path(peer, dev, remote, "vxlan")
            mac = _mac(data)
            assert mac is not None  # validate() checked it
            gateway = subnet.network_address
            out += [
                Neigh(dev.index, gateway, mac),
                Fdb(dev.index, mac, remote),
                gateway_route(
                    Route(subnet, gateway, dev.index, onlink=True, priority=metric), self.nexthops
                ),
            ]
        return _ordered(out)

    def _note_path(self, peer: Lease, dev: VxlanDevice, remote: Any, path: str) -> None:
        """With DirectRouting: one line whenever a peer moves between route and tunnel."""
        slot = (peer.key, dev.family)
        previous = self._paths.get(slot)
        if previous == path:
            return
        self._paths[slot] = path
        how = (
            f"direct route via {remote} dev {self.ctx.ext.name}"
            if path == "direct"
            else f"VXLAN: {'PublicIPv6' if dev.v6 else 'PublicIP'} {remote} is not on-link "
            f"on {self.ctx.ext.name}"
        )
        # First sight: the reconciler's "set ..." line says it already; a change is news.
        log.log(
            logging.INFO if previous is not None else logging.DEBUG,
            "peer %s: %s",
            peer.key,
            how,
            extra={"peer": str(peer.key), "public_ip": str(remote), "path": path},
        )


def _ordered(objects: list[Any]) -> tuple[Any, ...]:
    """Neighbours, then FDB entries, then routes: a route never goes in before its gateway."""
    rank = {Neigh: 0, Fdb: 1, Route: 2}
    return tuple(sorted(objects, key=lambda o: rank[type(o)]))


def _mac(data: dict[str, Any] | None) -> str | None:
    mac = (data or {}).get("VtepMAC")
    try:
        return normalize_mac(mac) if isinstance(mac, str) else None
    except LeaseDecodeError:
        return None


def _check_mac(data: dict[str, Any] | None, name: str, ours: str) -> Skip | None:
    raw = (data or {}).get("VtepMAC")
    if raw is None:
        return Skip(f"lease has no {name}", "vtep-mac")
    mac = _mac(data)
    if mac is None:
        return Skip(f"invalid {name}: {raw!r:.40}", "vtep-mac")
    if int(mac[:2], 16) & 1:
        return Skip(f"{name} {mac} is a multicast address", "vtep-mac")
    # A misconfigured or cloned node must not hijack our own traffic.
    if mac == ours:
        return Skip(f"{name} {mac} is our own", "vtep-mac")
    return None
