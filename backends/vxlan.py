"""The VXLAN backend: one device, and per peer one neighbour, FDB entry and route.

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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from flannelish.backends.base import Backend, BackendContext
from flannelish.backends.onlink import OnLink

from flannelish.errors import ConfigError, KernelError
from flannelish.kernel.mac import random_mac
from flannelish.kernel.netlink import Addr, Fdb, Link, Neigh, Route, VxlanSpec
from flannelish.kernel.resources import FdbResource, NeighResource, Resource, RouteResource, Skip
from flannelish.subnet.lease import Lease, LeaseAttrs, LeaseDecodeError, normalize_mac

log = logging.getLogger("flannelish.vxlan")

DEFAULT_PORT = 8472  # the Linux default, used by Flannel (not IANA's 4789)
OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
MIN_MTU = 68

# VxlanOptions field -> its name in the config's Backend section
OPTION_NAMES = {
    "vni": "VNI",
    "port": "Port",
    "mtu": "MTU",
    "gbp": "GBP",
    "learning": "Learning",
    "direct_routing": "DirectRouting",
}
LIVE_OPTIONS = frozenset({"direct_routing"})  # applied without a restart


@dataclass(frozen=True)
class VxlanOptions:
    vni: int = 1
    port: int = 0  # 0 = default (8472)
    mtu: int | None = None
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> VxlanOptions:
        """Backend section of the network config; keys match case-insensitively like Go."""
        fields = {str(k).lower(): v for k, v in (raw or {}).items()}

        def integer(key: str, name: str, low: int, high: int) -> int | None:
            value = fields.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"Backend.{name} must be an integer", f"got {value!r}")
            if not low <= value <= high:
                raise ConfigError(f"Backend.{name} must be in {low}..{high}", f"got {value}")
            return value

        def boolean(key: str, name: str) -> bool:
            value = fields.get(key, False)
            if not isinstance(value, bool):
                raise ConfigError(f"Backend.{name} must be true or false", f"got {value!r}")
            return value

        vni = integer("vni", "VNI", 0, (1 << 24) - 1)
        port = integer("port", "Port", 0, 65535)
        mtu = integer("mtu", "MTU", MIN_MTU + OVERHEAD, 65535)
        return cls(
            vni=1 if vni is None else vni,
            port=port or 0,
            mtu=mtu,
            gbp=boolean("gbp", "GBP"),
            learning=boolean("learning", "Learning"),
            direct_routing=boolean("directrouting", "DirectRouting"),
        )


class MacStore:
    """The VTEP MAC saved next to subnet.env, so a restarted daemon keeps it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> str | None:
        try:
            return normalize_mac(self.path.read_text().strip())
        except (OSError, LeaseDecodeError):
            return None

    def save(self, mac: str) -> None:
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(mac + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            # Not fatal: the device keeps the MAC; only a rebuilt node loses it.
            log.warning("cannot save VTEP MAC to %s: %s", self.path, exc.strerror)


class VxlanBackend(Backend):
    backend_type = "vxlan"

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(ctx)
        self.options = VxlanOptions.parse(getattr(ctx.network, "backend", None))
        self.name = f"flannel.{self.options.vni}"
        self.port = self.options.port or DEFAULT_PORT
        base_mtu = self.options.mtu or ctx.ext.mtu
        self._mtu = base_mtu - OVERHEAD
        if self._mtu < MIN_MTU:
            raise ConfigError(
                f"VXLAN MTU would be {self._mtu} (underlay MTU {base_mtu} - {OVERHEAD})",
                f"interface {ctx.ext.name} MTU is too small",
            )
        # Behind NAT the public IP is not ours; the tunnel must use the interface address.
        self.local: IPv4Address = ctx.ext.address
        self.macs = MacStore(ctx.state_dir / f"{self.name}.vtep-mac")
        self.mac: str = ""
        self.index: int | None = None
        self.lease: Lease | None = None
        self._onlink = OnLink(ctx.netlink, ctx.ext.index)
        self._paths: dict[Any, str] = {}  # peer subnet -> "direct" | "vxlan" (DirectRouting)
        self._resources: list[Resource] = [
            NeighResource(ctx.netlink, lambda: self.index),
            FdbResource(ctx.netlink, lambda: self.index),
            RouteResource(ctx.netlink),
        ]

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def _nl(self) -> Any:
        return self.ctx.netlink

    # -- device ----------------------------------------------------------------
    def _compatible(self, link: Link) -> bool:
        vx = link.vxlan
        return (
            link.kind == "vxlan"
            and vx is not None
            and vx.vni == self.options.vni
            and vx.local == self.local
            and vx.link == self.ctx.ext.index
            and vx.port == self.port
            and vx.learning == self.options.learning
        )

    def _spec(self) -> VxlanSpec:
        return VxlanSpec(
            name=self.name,
            vni=self.options.vni,
            local=self.local,
            link=self.ctx.ext.index,
            port=self.port,
            mac=self.mac,
            mtu=self._mtu,
            learning=self.options.learning,
            gbp=self.options.gbp,
        )

    def setup(self) -> None:
        if self.options.direct_routing:
            self._onlink.refresh()
        link = self._nl.link(self.name)
        stored = self.macs.load()
        if link is not None and self._compatible(link):
            self.mac = link.mac
            log.info("adopted existing device", extra={"dev": self.name, "mac": self.mac})
            if stored != self.mac:
                self.macs.save(self.mac)
            self.index = link.index
            self._fix_link(link)
            return
        # No saved MAC but our VNI's device from before (flanneld's, whose local
        # address is the PublicIP behind NAT): keep its MAC, which peers know.
        previous = link.mac if link is not None and self._same_vni(link) else None
        self.mac = stored or previous or random_mac()
        if stored is None:
            self.macs.save(self.mac)
        self._create(link)

    def _same_vni(self, link: Link) -> bool:
        vx = link.vxlan
        return link.kind == "vxlan" and vx is not None and vx.vni == self.options.vni

    def _create(self, old: Link | None) -> Link:
        if old is not None:
            log.info(
                "deleting incompatible device",
                extra={"op": "delete", "dev": old.name, "kind": old.kind or "?"},
            )
            self._nl.delete_link(old.index)
        link = self._nl.create_vxlan(self._spec())
        self.index = link.index
        log.info(
            "created device",
            extra={
                "op": "create",
                "dev": self.name,
                "vni": self.options.vni,
                "local": self.local,
                "underlay": self.ctx.ext.name,
                "port": self.port,
                "mtu": self._mtu,
                "mac": self.mac,
            },
        )
        return link

    def _fix_link(self, link: Link, up: bool | None = None) -> None:
        """Apply MTU and MAC to an adopted device (Flannel never updates them)."""
        mtu = self._mtu if link.mtu != self._mtu else None
        mac = self.mac if link.mac != self.mac else None
        state = True if up and not link.up else None
        if mtu is None and mac is None and state is None:
            return
        self._nl.set_link(link.index, mtu=mtu, mac=mac, up=state)
        changed = {k: v for k, v in (("mtu", mtu), ("mac", mac), ("up", state)) if v is not None}
        log.info("updated device", extra={"op": "set", "dev": self.name, **changed})

    def _ensure_address(self) -> None:
        if self.lease is None or self.index is None:
            return
        want = Addr(self.index, self.lease.subnet.network_address, 32)
        network = getattr(self.ctx.network, "network", None)
        for addr in self._nl.addrs(self.index):
            if addr != want and (network is None or addr.address in network):
                self._nl.del_addr(addr)
                log.info("deleted address", extra={"op": "delete", "dev": self.name, **_a(addr)})
        if want not in self._nl.addrs(self.index):
            self._nl.add_addr(want)
            log.info("added address", extra={"op": "add", "dev": self.name, **_a(want)})

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(
            public_ip=self.ctx.ext.public_ip,
            backend_type=self.backend_type,
            backend_data={"VNI": self.options.vni, "VtepMAC": self.mac},
        )

    def bind_lease(self, lease: Lease) -> None:
        self.lease = lease
        self._ensure_address()
        link = self._nl.link(self.name)
        if link is None:
            raise KernelError(f"device {self.name} vanished during start-up")
        self._fix_link(link, up=True)

    def ensure_base(self) -> bool:
        link = self._nl.link(self.name)
        rebuilt = False
        if link is None or not self._compatible(link):
            log.warning("device %s missing or changed; rebuilding it", self.name)
            link = self._create(link)
            rebuilt = True
        self.index = link.index
        self._ensure_address()
        self._fix_link(link, up=self.lease is not None)
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

    def direct(self, ip: IPv4Address) -> bool:
        """Would a peer with this PublicIP get a plain route (DirectRouting, on-link)?"""
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
        try:
            mac = attrs.vtep_mac
        except LeaseDecodeError as exc:
            return Skip(f"invalid VtepMAC: {exc}", "vtep-mac")
        if mac is None:
            return Skip("lease has no VtepMAC", "vtep-mac")
        if int(mac[:2], 16) & 1:
            return Skip(f"VtepMAC {mac} is a multicast address", "vtep-mac")
        # A misconfigured or cloned node must not hijack our own traffic.
        if mac == self.mac:
            return Skip(f"VtepMAC {mac} is our own", "vtep-mac")
        if attrs.public_ip in (self.ctx.ext.public_ip, self.local):
            return Skip(f"PublicIP {attrs.public_ip} is our own", "public-ip")
        return None

    def claims(self, peer: Lease) -> Sequence[Hashable]:
        # One FDB entry per MAC: a second peer with the same MAC would steal the first's.
        return (("vtep-mac", peer.attrs.vtep_mac),)

    def plan(self, peer: Lease) -> Sequence[Any] | Skip:
        attrs = peer.attrs
        skip = self.validate(peer)
        if skip is not None:
            return skip
        mac = attrs.vtep_mac
        assert mac is not None  # validate() checked it
        if self.lease is not None and peer.subnet.overlaps(self.lease.subnet):
            return Skip(f"subnet overlaps our lease {self.lease.subnet}", "overlap")
        if self.direct(attrs.public_ip):
            self._note_path(peer, "direct")
            return (Route(peer.subnet, attrs.public_ip, self.ctx.ext.index),)
        if self.index is None:
            return Skip("device not present", "device")
        if self.options.direct_routing:
            self._note_path(peer, "vxlan")
        gateway = peer.subnet.network_address
        return (
            Neigh(self.index, gateway, mac),
            Fdb(self.index, mac, attrs.public_ip),
            Route(peer.subnet, gateway, self.index, onlink=True),
        )

    def _note_path(self, peer: Lease, path: str) -> None:
        """With DirectRouting: one line whenever a peer moves between route and tunnel."""
        previous = self._paths.get(peer.subnet)
        if previous == path:
            return
        self._paths[peer.subnet] = path
        how = (
            f"direct route via {peer.attrs.public_ip} dev {self.ctx.ext.name}"
            if path == "direct"
            else f"VXLAN: PublicIP {peer.attrs.public_ip} is not on-link on {self.ctx.ext.name}"
        )
        # First sight: the reconciler's "set ..." line says it already; a change is news.
        log.log(
            logging.INFO if previous is not None else logging.DEBUG,
            "peer %s: %s",
            peer.subnet,
            how,
            extra={"peer": str(peer.subnet), "public_ip": str(peer.attrs.public_ip), "path": path},
        )


def _a(addr: Addr) -> dict[str, str]:
    return {"address": f"{addr.address}/{addr.prefixlen}"}
