"""One VXLAN device of the VXLAN backend: ``flannel.<VNI>`` (IPv4) or
``flannel-v6.<VNI>`` (IPv6), its options, its stable MAC and its address.

Each family's overlay has its own device whose tunnel runs over the same
family: ``local`` is our IPv4 or IPv6 underlay address.  The MTU is the
underlay's minus the encapsulation: 50 bytes over IPv4, 70 over IPv6 (outer
IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14; Flannel uses 50 for both and
breaks large packets, its #1781).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from flannelish.backends.base import option_integer

from flannelish.errors import ConfigError
from flannelish.kernel.mac import random_mac
from flannelish.kernel.netlink import AF_INET, AF_INET6, Addr, Link, VxlanSpec
from flannelish.subnet.lease import LeaseDecodeError, normalize_mac

log = logging.getLogger("flannelish.vxlan")

DEFAULT_PORT = 8472  # the Linux default, used by Flannel (not IANA's 4789)
OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
OVERHEAD_V6 = 70  # outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
MIN_MTU = 68
MIN_MTU_V6 = 1280  # IPv6 needs at least this on every link

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

        integer = functools.partial(option_integer, fields)

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


class VxlanDevice:
    """One family's device: created or adopted, kept compatible, addressed."""

    def __init__(
        self,
        netlink: Any,
        options: VxlanOptions,
        local: IPv4Address | IPv6Address,
        underlay: tuple[str, int, int],  # name, index, MTU
        state_dir: Path,
    ) -> None:
        self._nl = netlink
        self.options = options
        self.local = local
        self.v6 = local.version == 6
        self.family = AF_INET6 if self.v6 else AF_INET
        vni = options.vni
        self.name = f"flannel-v6.{vni}" if self.v6 else f"flannel.{vni}"
        self.port = options.port or DEFAULT_PORT
        self.underlay, self.link, underlay_mtu = underlay
        overhead, floor = (OVERHEAD_V6, MIN_MTU_V6) if self.v6 else (OVERHEAD, MIN_MTU)
        base = options.mtu or underlay_mtu
        self.mtu = base - overhead
        if self.mtu < floor:
            raise ConfigError(
                f"VXLAN MTU of {self.name} would be {self.mtu} (underlay MTU {base} - {overhead})",
                f"interface {self.underlay} MTU is too small (the minimum here is {floor})",
            )
        self.macs = MacStore(state_dir / f"{self.name}.vtep-mac")
        self.mac = ""
        self.index: int | None = None

    def compatible(self, link: Link) -> bool:
        vx = link.vxlan
        return (
            link.kind == "vxlan"
            and vx is not None
            and vx.vni == self.options.vni
            and vx.local == self.local
            and vx.link == self.link
            and vx.port == self.port
            and vx.learning == self.options.learning
        )

    def spec(self) -> VxlanSpec:
        return VxlanSpec(
            name=self.name,
            vni=self.options.vni,
            local=self.local,
            link=self.link,
            port=self.port,
            mac=self.mac,
            mtu=self.mtu,
            learning=self.options.learning,
            gbp=self.options.gbp,
        )

    def setup(self) -> None:
        """Adopt a compatible device (keeping its MAC) or create one with the stored MAC."""
        link = self._nl.link(self.name)
        stored = self.macs.load()
        if link is not None and self.compatible(link):
            self.mac = link.mac
            log.info("adopted existing device", extra={"dev": self.name, "mac": self.mac})
            if stored != self.mac:
                self.macs.save(self.mac)
            self.index = link.index
            self.fix_link(link)
            return
        # No saved MAC but our VNI's device from before (flanneld's, whose local
        # address is the PublicIP behind NAT): keep its MAC, which peers know.
        previous = link.mac if link is not None and self._same_vni(link) else None
        self.mac = stored or previous or random_mac()
        if stored is None:
            self.macs.save(self.mac)
        self.create(link)

    def _same_vni(self, link: Link) -> bool:
        vx = link.vxlan
        return link.kind == "vxlan" and vx is not None and vx.vni == self.options.vni

    def create(self, old: Link | None) -> Link:
        if old is not None:
            log.info(
                "deleting incompatible device",
                extra={"op": "delete", "dev": old.name, "kind": old.kind or "?"},
            )
            self._nl.delete_link(old.index)
        link = self._nl.create_vxlan(self.spec())
        self.index = link.index
        if self.v6:  # all its state is programmed: no router advertisements
            self._nl.sysctl(f"net.ipv6.conf.{self.name}.accept_ra", "0")
        log.info(
            "created device",
            extra={
                "op": "create",
                "dev": self.name,
                "vni": self.options.vni,
                "local": self.local,
                "underlay": self.underlay,
                "port": self.port,
                "mtu": self.mtu,
                "mac": self.mac,
            },
        )
        return link

    def fix_link(self, link: Link, up: bool | None = None) -> None:
        """Apply MTU and MAC to an adopted device (Flannel never updates them)."""
        mtu = self.mtu if link.mtu != self.mtu else None
        mac = self.mac if link.mac != self.mac else None
        state = True if up and not link.up else None
        if mtu is None and mac is None and state is None:
            return
        self._nl.set_link(link.index, mtu=mtu, mac=mac, up=state)
        changed = {k: v for k, v in (("mtu", mtu), ("mac", mac), ("up", state)) if v is not None}
        log.info("updated device", extra={"op": "set", "dev": self.name, **changed})

    def ensure_address(
        self, subnet: IPv4Network | IPv6Network | None, network: IPv4Network | IPv6Network | None
    ) -> None:
        """``<subnet network address>/32`` (``/128``); other addresses inside the pod
        network (IPv6: every non-link-local one) are removed."""
        if subnet is None or self.index is None:
            return
        want = Addr(self.index, subnet.network_address, subnet.max_prefixlen)
        have = self._nl.addrs(self.index, self.family)
        for addr in have:
            if addr == want or addr.address.is_link_local:
                continue
            if self.v6 or network is None or addr.address in network:
                self._nl.del_addr(addr)
                log.info("deleted address", extra={"op": "delete", "dev": self.name, **_a(addr)})
        if want not in have:
            self._nl.add_addr(want)
            log.info("added address", extra={"op": "add", "dev": self.name, **_a(want)})

    def ensure(
        self,
        subnet: IPv4Network | IPv6Network | None,
        network: IPv4Network | IPv6Network | None,
    ) -> bool:
        """The full pass's base check: rebuild a missing or changed device, re-assert its
        address and state (up once there is a lease); True if rebuilt."""
        link = self._nl.link(self.name)
        rebuilt = False
        if link is None or not self.compatible(link):
            log.warning("device %s missing or changed; rebuilding it", self.name)
            link = self.create(link)
            rebuilt = True
        self.index = link.index
        self.ensure_address(subnet, network)
        self.fix_link(link, up=subnet is not None)
        return rebuilt


def _a(addr: Addr) -> dict[str, str]:
    return {"address": f"{addr.address}/{addr.prefixlen}"}
