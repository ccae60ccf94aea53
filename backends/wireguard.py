"""The WireGuard backend: encrypted pod traffic, wire-compatible with Flannel's.

Design (../shared/reference/flannel.md §4b, plus a userspace fallback):

* Config keys as Flannel: ``PSK``, ``ListenPort`` (51820), ``ListenPortV6``
  (51821, validated; used once IPv6 lands), ``MTU``, ``Mode``,
  ``PersistentKeepaliveInterval``.  Mode: ``ipv4``, and ``auto`` (= ipv4 on an
  IPv4-only network) work; ``separate`` / ``ipv6`` / ``auto`` with EnableIPv6
  are a config error until the IPv6 overlay exists.  No Mode = IPv4 (what
  Flannel's default ``separate`` amounts to on an IPv4-only network).
* Lease: ``"BackendType":"wireguard","BackendData":{"PublicKey":"<b64>","Port":51820}``.
* Device ``flannel-wg``: MTU = (MTU or underlay MTU) - 80; address = our
  subnet's network address /32; one route for the whole Network via the
  device (our route protocol; a foreign route to the Network is left alone
  and logged).  Kernel WireGuard where ``ip link add type wireguard``
  works, else Debian's wireguard-go, supervised
  (:class:`flannelish.kernel.wireguard.WireguardGo`).
* Per peer one :class:`WgPeer` (key, endpoint PublicIP:Port, allowed IPs =
  the peer's subnet, PSK and keepalive if set), applied by the reconciler
  through :class:`WgPeerResource` (UAPI).  No per-peer routes.
* Drift: the kernel monitor never sees UAPI changes, so :meth:`start_watch`
  polls the device's peers (one ``get=1``, ~0.4 ms) every ``POLL_SECONDS``
  and the process, and triggers a full pass with the base check on a
  difference: a peer removed by hand is back within ~0.2 s.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flannelish.backends.base import Backend, BackendContext

from flannelish.errors import ConfigError, KernelError
from flannelish.kernel.netlink import ROUTE_PROTO, Addr, Route, RouteExists
from flannelish.kernel.resources import Resource, Skip
from flannelish.kernel.wireguard import (
    NodeKey,
    UapiControl,
    WgControl,
    WgPeer,
    WgPeerResource,
    WgToolControl,
    WireguardGo,
    b64_to_hex,
    clamp_hex,
    kernel_wireguard_available,
    load_or_create_key,
    valid_key,
)
from flannelish.subnet.lease import Lease, LeaseAttrs

log = logging.getLogger("flannelish.wireguard")

DEVICE = "flannel-wg"
DEFAULT_PORT = 51820
DEFAULT_PORT_V6 = 51821
OVERHEAD = 80  # outer IPv6 40 + UDP 8 + WireGuard 32: one value for both families
MIN_MTU = 68
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
POLL_SECONDS = 0.2
PRIVATE_RUN_ENV = "FLANNELISH_WG_PRIVATE_RUN"  # "1": wireguard-go in a private mount namespace
MODES = ("separate", "auto", "ipv4", "ipv6")


@dataclass(frozen=True)
class WireguardOptions:
    psk: str | None = None
    listen_port: int = DEFAULT_PORT
    listen_port_v6: int = DEFAULT_PORT_V6
    mtu: int | None = None
    mode: str = "ipv4"
    keepalive: int = 0

    @classmethod
    def parse(cls, raw: dict[str, Any] | None, enable_ipv6: bool = False) -> WireguardOptions:
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

        psk = fields.get("psk")
        if psk in (None, ""):
            psk = None
        elif not valid_key(psk):
            raise ConfigError(
                "Backend.PSK must be a base64 32-byte key", "make one with `wg genpsk`"
            )
        mode = fields.get("mode")
        if mode is None:
            mode = "ipv4"  # Flannel's "separate" on an IPv4-only network: one flannel-wg
        if not isinstance(mode, str) or mode.lower() not in MODES:
            raise ConfigError(f"Backend.Mode must be one of {', '.join(MODES)}", f"got {mode!r}")
        mode = mode.lower()
        if mode == "auto" and not enable_ipv6:
            mode = "ipv4"
        if mode != "ipv4":
            raise ConfigError(
                f'Backend.Mode "{mode}" needs the IPv6 overlay, which flannelish does not have yet',
                'use "ipv4" (or "auto" on an IPv4-only network)',
            )
        return cls(
            psk=psk,
            listen_port=integer("listenport", "ListenPort", 1, 65535) or DEFAULT_PORT,
            listen_port_v6=integer("listenportv6", "ListenPortV6", 1, 65535) or DEFAULT_PORT_V6,
            mtu=integer("mtu", "MTU", MIN_MTU + OVERHEAD, 65535),
            mode=mode,
            keepalive=integer(
                "persistentkeepaliveinterval", "PersistentKeepaliveInterval", 0, 65535
            )
            or 0,
        )


def key_file_path() -> Path:
    return Path(os.environ.get("WIREGUARD_KEY_FILE") or DEFAULT_KEY_FILE)


class WireguardBackend(Backend):
    backend_type = "wireguard"

    def __init__(self, ctx: BackendContext, force_userspace: bool | None = None) -> None:
        super().__init__(ctx)
        self.options = WireguardOptions.parse(
            getattr(ctx.network, "backend", None), bool(getattr(ctx.network, "enable_ipv6", False))
        )
        self.name = DEVICE
        self.port = self.options.listen_port
        base = self.options.mtu or ctx.ext.mtu
        self._mtu = base - OVERHEAD
        if self._mtu < MIN_MTU:
            raise ConfigError(
                f"WireGuard MTU would be {self._mtu} (underlay MTU {base} - {OVERHEAD})",
                f"interface {ctx.ext.name} MTU is too small",
            )
        self.key: NodeKey | None = None
        self.index: int | None = None
        self.lease: Lease | None = None
        self._force_userspace = force_userspace
        self.implementation = ""  # "kernel" | "userspace (wireguard-go)"
        self.wggo: WireguardGo | None = None
        self.control: WgControl | None = None
        self._peers: WgPeerResource | None = None
        self._route_conflict_logged = False
        self._psk_hex = b64_to_hex(self.options.psk) if self.options.psk else None

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def _nl(self) -> Any:
        return self.ctx.netlink

    # -- device ----------------------------------------------------------------------
    def setup(self) -> None:
        self.key = load_or_create_key(key_file_path(), self.ctx.state_dir / f"{DEVICE}.pubkey")
        link = self._nl.link(self.name)
        kernel = False
        if self._force_userspace is not True:
            if link is not None and link.kind == "wireguard":
                kernel = True
            elif link is None or link.kind != "tun":
                kernel = self._force_userspace is False or kernel_wireguard_available(self.name)
        if kernel:
            self.implementation = "kernel"
            self.control = WgToolControl(self.name)
        else:
            self.implementation = "userspace (wireguard-go)"
            private = os.environ.get(PRIVATE_RUN_ENV, "") == "1"
            self.wggo = WireguardGo(self.name, self.ctx.state_dir, private)
            wggo = self.wggo
            self.control = UapiControl(wggo.socket_path)
        self._peers = WgPeerResource(self.name, self.control, self._psk_hex)
        log.info(
            "WireGuard implementation: %s",
            self.implementation,
            extra={"dev": self.name, "public_key": self.key.public, "port": self.port},
        )
        self._ensure_device()

    def _ensure_device(self) -> bool:
        """The device exists and carries our key and port; True if it is new."""
        rebuilt = False
        if self.wggo is not None:
            rebuilt = self.wggo.ensure()
        elif self._nl.link(self.name) is None:
            r = subprocess.run(
                ["ip", "link", "add", self.name, "type", "wireguard"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if r.returncode != 0:
                raise KernelError(f"cannot create {self.name}", r.stderr.strip())
            rebuilt = True
        assert self.control is not None and self.key is not None
        state = self.control.get()
        want = b64_to_hex(self.key.private)
        lines = []
        if state.private_hex != clamp_hex(want):
            lines.append(f"private_key={want}")
        if state.listen_port != self.port:
            lines.append(f"listen_port={self.port}")
        if lines:
            self.control.set(lines)
        link = self._nl.link(self.name)
        if link is None:
            raise KernelError(f"device {self.name} vanished")
        self.index = link.index
        if link.mtu != self._mtu or (self.lease is not None and not link.up):
            self._nl.set_link(
                link.index,
                mtu=self._mtu if link.mtu != self._mtu else None,
                up=True if self.lease is not None and not link.up else None,
            )
        return rebuilt

    def _ensure_address_and_route(self) -> None:
        if self.lease is None or self.index is None:
            return
        want = Addr(self.index, self.lease.subnet.network_address, 32)
        network = getattr(self.ctx.network, "network", None)
        for addr in self._nl.addrs(self.index):
            if addr != want and (network is None or addr.address in network):
                self._nl.del_addr(addr)
        if want not in self._nl.addrs(self.index):
            self._nl.add_addr(want)
        if network is None:
            return
        route = Route(network, None, self.index)
        ours = [r for r in self._nl.routes(ROUTE_PROTO) if r.dst == network]
        if ours == [route]:
            return
        try:
            if ours:
                self._nl.replace_route(route)
            else:
                self._nl.add_route(route)
            log.info("set network route", extra={"dst": str(network), "dev": self.name})
            self._route_conflict_logged = False
        except RouteExists:
            if not self._route_conflict_logged:
                self._route_conflict_logged = True
                log.error(
                    "a route to %s that flannelish does not own is in the way; left alone "
                    "(pod traffic to peers will not use %s)",
                    network,
                    self.name,
                )

    def lease_attrs(self) -> LeaseAttrs:
        assert self.key is not None
        return LeaseAttrs(
            public_ip=self.ctx.ext.public_ip,
            backend_type=self.backend_type,
            backend_data={"PublicKey": self.key.public, "Port": self.port},
        )

    def bind_lease(self, lease: Lease) -> None:
        self.lease = lease
        self._ensure_device()
        self._ensure_address_and_route()

    def ensure_base(self) -> bool:
        rebuilt = self._ensure_device()
        if rebuilt:
            log.warning("device %s was missing; rebuilt it", self.name)
        self._ensure_address_and_route()
        return rebuilt

    # -- peers ---------------------------------------------------------------------------
    def resources(self) -> Sequence[Resource]:
        return [self._peers] if self._peers is not None else []

    def validate(self, peer: Lease) -> Skip | None:
        attrs = peer.attrs
        if attrs.backend_type != self.backend_type:
            return Skip(
                f"backend type {attrs.backend_type or 'none'!r}, we use wireguard", "backend-type"
            )
        data = attrs.backend_data or {}
        key = data.get("PublicKey")
        if not valid_key(key):
            return Skip("lease has no valid WireGuard PublicKey", "wg-key")
        port = data.get("Port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            return Skip(f"lease has an invalid WireGuard Port {port!r}", "wg-port")
        if self.key is not None and key == self.key.public:
            return Skip("PublicKey is our own", "wg-key")
        if attrs.public_ip in (self.ctx.ext.public_ip, self.ctx.ext.address):
            return Skip(f"PublicIP {attrs.public_ip} is our own", "public-ip")
        return None

    def claims(self, peer: Lease) -> Sequence[Hashable]:
        # One peer per key on the device: a second lease with it would steal the allowed IPs.
        return (("wg-key", (peer.attrs.backend_data or {}).get("PublicKey")),)

    def plan(self, peer: Lease) -> Sequence[Any] | Skip:
        skip = self.validate(peer)
        if skip is not None:
            return skip
        if self.lease is not None and peer.subnet.overlaps(self.lease.subnet):
            return Skip(f"subnet overlaps our lease {self.lease.subnet}", "overlap")
        data = peer.attrs.backend_data or {}
        return (
            WgPeer(
                self.name,
                data["PublicKey"],
                f"{peer.attrs.public_ip}:{data['Port']}",
                (peer.subnet,),
                "configured" if self.options.psk else "",
                self.options.keepalive,
            ),
        )

    # -- drift watch and supervision ------------------------------------------------
    def start_watch(self, trigger: Callable[[], None]) -> Callable[[], None]:
        """Poll the process and the device's peers; trigger a full pass on drift."""
        stop = threading.Event()

        def body() -> None:
            while not stop.wait(POLL_SECONDS):
                try:
                    if self.wggo is not None and not self.wggo.alive():
                        log.warning("wireguard-go for %s is gone", self.name)
                        trigger()
                    elif self._peers is not None and self._peers.drifted():
                        log.info("peers on %s changed behind our back; repairing", self.name)
                        trigger()
                except KernelError:
                    trigger()  # socket gone: the base check restarts the device
                except Exception as exc:  # the watch must not die
                    log.warning("wireguard watch: %s", exc)

        thread = threading.Thread(target=body, name="wireguard-watch", daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(timeout=2)

        return halt

    def status(self) -> dict[str, Any]:
        """For /status, doctor and metrics: implementation, key file mode, per-peer handshakes."""
        out: dict[str, Any] = {"implementation": self.implementation, "device": self.name}
        if self.wggo is not None:
            out["wireguard_go_pid"] = self.wggo.pid
            out["wireguard_go_restarts"] = self.wggo.restarts
        if self.key is not None:
            out["public_key"] = self.key.public
            out["key_file"] = str(self.key.path)
            try:
                out["key_file_mode"] = oct(stat.S_IMODE(self.key.path.stat().st_mode))
            except OSError:
                out["key_file_mode"] = None  # missing: the next restart fails loudly
        peers = []
        now = time.time()
        try:
            state = self.control.get() if self.control is not None else None
        except KernelError:
            state = None
        for p in state.peers if state else ():
            peers.append(
                {
                    "public_key": p.public_key,
                    "endpoint": p.endpoint,
                    "allowed_ips": [str(n) for n in p.allowed_ips],
                    "handshake_age_seconds": round(now - p.last_handshake, 1)
                    if p.last_handshake
                    else None,
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                }
            )
        out["peers"] = peers
        out["peers_without_handshake"] = sum(1 for p in peers if p["handshake_age_seconds"] is None)
        return out
