"""The WireGuard backend: encrypted pod traffic, wire-compatible with Flannel's.

Design (docs/flannel-compat.md §8a, plus a userspace fallback):

* Config keys as Flannel: ``PSK``, ``ListenPort`` (51820), ``ListenPortV6``
  (51821), ``MTU``, ``Mode`` (default ``separate``),
  ``PersistentKeepaliveInterval``.
* Modes, as Flannel defines them:

  - ``separate``: one device per family, ``flannel-wg`` (IPv4 pods over the
    IPv4 underlay, ListenPort) and ``flannel-wg-v6`` (IPv6 pods over the IPv6
    underlay, ListenPortV6), each with its own peer per node;
  - ``ipv4`` / ``ipv6`` / ``auto``: one ``flannel-wg`` carrying both families,
    one peer per node whose allowed IPs are all its subnets; the endpoint is
    the peer's IPv4 (``ipv4``) or IPv6 (``ipv6``) address, or for ``auto``
    chosen per peer by :func:`auto_family` (Flannel's rule).

* Lease (Flannel's bytes): ``BackendData {"PublicKey","Port": ListenPort}``
  when IPv4 is enabled, ``BackendV6Data {"PublicKey","Port": ListenPortV6}``
  when IPv6 is, in every mode.  One key per node for both.
* One deviation, because Flannel's single-device modes are broken there: its
  one device listens on ListenPort, yet it advertises and dials the IPv6 half's
  Port (ListenPortV6), where nothing listens.  We dial a single-device peer's
  IPv6 endpoint at the port of its one device, which is the IPv4 half's Port
  when the lease has one; on an IPv6-only network (no IPv4 half) our one
  device listens on ListenPortV6, the port our lease advertises.
* A lease half without ``Port`` (Flannel before 0.26.6) means our own port.
* Device (backends/wireguard_device.py): MTU = (MTU or underlay MTU) - 80;
  address per family; one route per family for the network.  Kernel WireGuard
  where ``ip link add type wireguard`` works, else Debian's wireguard-go,
  supervised (:class:`flannelish.kernel.wireguard_go.WireguardGo`).
* Per peer and device one :class:`WgPeer` (key, endpoint, allowed IPs, PSK
  and keepalive if set), applied by the reconciler through one
  :class:`WgPeerResource` for all devices (UAPI).  No per-peer routes.
* Drift: the kernel monitor never sees UAPI changes, so :meth:`start_watch`
  polls every device's peers (one ``get=1``, ~0.4 ms each) and processes
  every ``POLL_SECONDS``, and triggers a full pass with the base check on a
  difference: a peer removed by hand is back within ~0.2 s.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from flannelish.backends.base import Backend, BackendContext
from flannelish.backends.wireguard_device import PRIVATE_RUN_ENV, WgDevice
from flannelish.backends.wireguard_options import (
    DEFAULT_PORT,
    DEFAULT_PORT_V6,
    MIN_MTU,
    MODES,
    OVERHEAD,
    WireguardOptions,
    auto_family,
)

from flannelish.errors import ConfigError, KernelError
from flannelish.kernel.resources import Resource, Skip
from flannelish.kernel.wireguard import WgPeer, WgPeerResource, sort_nets
from flannelish.kernel.wireguard_keys import NodeKey, b64_to_hex, load_or_create_key, valid_key
from flannelish.subnet.keys import overlap
from flannelish.subnet.lease import Lease, LeaseAttrs

log = logging.getLogger("flannelish.wireguard")

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PORT_V6",
    "MODES",
    "OVERHEAD",
    "PRIVATE_RUN_ENV",
    "WireguardBackend",
    "WireguardOptions",
    "auto_family",
]

DEVICE = "flannel-wg"
DEVICE_V6 = "flannel-wg-v6"
MIN_MTU_V6 = 1280  # the kernel turns IPv6 off on a device below it
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
POLL_SECONDS = 0.2


def key_file_path() -> Path:
    return Path(os.environ.get("WIREGUARD_KEY_FILE") or DEFAULT_KEY_FILE)


class WireguardBackend(Backend):
    backend_type = "wireguard"

    def __init__(self, ctx: BackendContext, force_userspace: bool | None = None) -> None:
        super().__init__(ctx)
        config, ext = ctx.network, ctx.ext
        self.v4_enabled = bool(getattr(config, "enable_ipv4", True))
        self.v6_enabled = bool(getattr(config, "enable_ipv6", False))
        self.options = WireguardOptions.parse(
            getattr(config, "backend", None), self.v6_enabled, self.v4_enabled
        )
        opts = self.options
        base = opts.mtu or ext.mtu
        self._mtu = base - OVERHEAD
        floor = MIN_MTU_V6 if self.v6_enabled else MIN_MTU
        if self._mtu < floor:
            raise ConfigError(
                f"WireGuard MTU would be {self._mtu} (underlay MTU {base} - {OVERHEAD})",
                f"interface {ext.name} MTU is too small (IPv{6 if floor > MIN_MTU else 4} "
                f"needs {floor})",
            )
        self.separate = opts.mode == "separate"
        families = tuple(f for f, on in ((4, self.v4_enabled), (6, self.v6_enabled)) if on)
        # device per family it carries (None: that family is off)
        self.dev4: WgDevice | None = None
        self.dev6: WgDevice | None = None
        if self.separate:
            if self.v4_enabled:
                self.dev4 = self._device(DEVICE, opts.listen_port, (4,))
            if self.v6_enabled:
                self.dev6 = self._device(DEVICE_V6, opts.listen_port_v6, (6,))
        else:
            # IPv6-only: listen where our lease says we are (its only half, ListenPortV6).
            port = opts.listen_port if self.v4_enabled else opts.listen_port_v6
            one = self._device(DEVICE, port, families)
            self.dev4 = one if self.v4_enabled else None
            self.dev6 = one if self.v6_enabled else None
        self.devices = list(dict.fromkeys(d for d in (self.dev4, self.dev6) if d is not None))
        primary = self.devices[0]
        self.name = primary.name  # what status and doctor report first
        self.port = primary.port
        self.key: NodeKey | None = None
        self.lease: Lease | None = None
        self._force_userspace = force_userspace
        self._peers: WgPeerResource | None = None
        self._psk_hex = b64_to_hex(opts.psk) if opts.psk else None

    def _device(self, name: str, port: int, families: tuple[int, ...]) -> WgDevice:
        return WgDevice(self.ctx.netlink, name, port, families, self._mtu, self.ctx.state_dir)

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def implementation(self) -> str:
        return self.devices[0].implementation

    @property
    def wggo(self) -> Any:
        return self.devices[0].wggo

    @property
    def control(self) -> Any:
        return self.devices[0].control

    @property
    def index(self) -> int | None:
        return self.devices[0].index

    # -- devices ---------------------------------------------------------------------
    def setup(self) -> None:
        self.key = load_or_create_key(key_file_path(), self.ctx.state_dir / f"{DEVICE}.pubkey")
        for dev in self.devices:
            dev.choose(self._force_userspace)
            log.info(
                "WireGuard implementation: %s",
                dev.implementation,
                extra={
                    "dev": dev.name,
                    "public_key": self.key.public,
                    "port": dev.port,
                    "mode": self.options.mode,
                },
            )
        self._peers = WgPeerResource(
            {d.name: d.control for d in self.devices if d.control is not None}, self._psk_hex
        )
        for dev in self.devices:
            dev.ensure(self.key, up=False)

    def _families(self) -> list[tuple[WgDevice, Any, Any]]:
        """(device, our subnet, the network) per enabled family."""
        key = self.lease.key if self.lease is not None else None
        config = self.ctx.network
        out: list[tuple[WgDevice, Any, Any]] = []
        if self.dev4 is not None:
            out.append((self.dev4, key.v4 if key else None, getattr(config, "network", None)))
        if self.dev6 is not None:
            out.append((self.dev6, key.v6 if key else None, getattr(config, "ipv6_network", None)))
        return out

    def lease_attrs(self) -> LeaseAttrs:
        """Flannel's value: one half per enabled family, each with ListenPort(V6)."""
        assert self.key is not None
        ext, opts, public = self.ctx.ext, self.options, self.key.public
        return LeaseAttrs(
            public_ip=ext.public_ip,
            backend_type=self.backend_type,
            backend_data={"PublicKey": public, "Port": opts.listen_port}
            if self.v4_enabled
            else None,
            public_ipv6=ext.public_ipv6 if self.v6_enabled else None,
            backend_v6_data={"PublicKey": public, "Port": opts.listen_port_v6}
            if self.v6_enabled
            else None,
        )

    def bind_lease(self, lease: Lease) -> None:
        self.lease = lease
        self.ensure_base()

    def ensure_base(self) -> bool:
        assert self.key is not None
        rebuilt = False
        for dev in self.devices:
            if dev.ensure(self.key, up=self.lease is not None):
                rebuilt = True
                if self.lease is not None:
                    log.warning("device %s was missing; rebuilt it", dev.name)
        for dev, subnet, network in self._families():
            dev.ensure_address_and_route(subnet, network)
        return rebuilt

    # -- peers ---------------------------------------------------------------------------
    def resources(self) -> Sequence[Resource]:
        return [self._peers] if self._peers is not None else []

    def _halves(self, peer: Lease) -> list[tuple[int, Any, Any, dict[str, Any]]]:
        """(family, peer subnet, peer public address, backend data) per family we share."""
        key, attrs = peer.key, peer.attrs
        out: list[tuple[int, Any, Any, dict[str, Any]]] = []
        if self.v4_enabled and key.v4 is not None:
            out.append((4, key.v4, attrs.public_ip, attrs.backend_data or {}))
        if self.v6_enabled and key.v6 is not None:
            out.append((6, key.v6, attrs.public_ipv6, attrs.backend_v6_data or {}))
        return out

    def validate(self, peer: Lease) -> Skip | None:
        attrs = peer.attrs
        if attrs.backend_type != self.backend_type:
            return Skip(
                f"backend type {attrs.backend_type or 'none'!r}, we use wireguard", "backend-type"
            )
        ext = self.ctx.ext
        for family, _subnet, public, data in self._halves(peer):
            half = "BackendData" if family == 4 else "BackendV6Data"
            if not valid_key(data.get("PublicKey")):
                return Skip(f"lease has no valid WireGuard PublicKey in {half}", "wg-key")
            port = data.get("Port")
            if port is not None and (
                isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
            ):
                return Skip(f"lease has an invalid WireGuard Port {port!r} in {half}", "wg-port")
            if self.key is not None and data["PublicKey"] == self.key.public:
                return Skip("PublicKey is our own", "wg-key")
            if family == 4 and public in (ext.public_ip, ext.address):
                return Skip(f"PublicIP {public} is our own", "public-ip")
            if family == 6 and public is not None and public in (ext.public_ipv6, ext.address6):
                return Skip(f"PublicIPv6 {public} is our own", "public-ip")
            if family == 6 and public is None and (self.separate or self.options.mode == "ipv6"):
                return Skip("lease has no PublicIPv6", "public-ip")
        return None

    def claims(self, peer: Lease) -> Sequence[Hashable]:
        # One peer per key and device: a second lease with it would steal the allowed IPs.
        planned = self.plan(peer)
        if isinstance(planned, Skip):
            return ()
        return tuple(("wg-key", p.dev, p.public_key) for p in planned)

    def plan(self, peer: Lease) -> Sequence[Any] | Skip:
        skip = self.validate(peer)
        if skip is not None:
            return skip
        halves = self._halves(peer)
        if not halves:
            return Skip("lease shares no address family with our network", "family")
        own = self.lease.key if self.lease is not None else None
        for family, subnet, _public, _data in halves:
            mine = (own.v4 if family == 4 else own.v6) if own is not None else None
            if mine is not None and overlap(subnet, mine):
                return Skip(f"subnet overlaps our lease {mine}", "overlap")
        psk = "configured" if self.options.psk else ""
        keepalive = self.options.keepalive
        if self.separate:
            out = []
            for family, subnet, public, data in halves:
                dev = self.dev4 if family == 4 else self.dev6
                assert dev is not None
                port = data.get("Port") or dev.port
                endpoint = _endpoint(public, port)
                out.append(WgPeer(dev.name, data["PublicKey"], endpoint, (subnet,), psk, keepalive))
            return tuple(out)
        # One device for both families: one peer, the endpoint in one family.
        via = self._endpoint_family(peer)
        if via is None:
            return Skip("no underlay address family in common with this peer", "family")
        attrs = peer.attrs
        v4_data, v6_data = attrs.backend_data or {}, attrs.backend_v6_data or {}
        dev = self.devices[0]
        if via == 4:
            endpoint = _endpoint(attrs.public_ip, v4_data.get("Port") or dev.port)
        else:
            # The port of the peer's one device: its IPv4 half's, else its IPv6 half's.
            port6 = v4_data.get("Port") or v6_data.get("Port") or dev.port
            endpoint = _endpoint(attrs.public_ipv6, port6)
        key = halves[-1][3]["PublicKey"]  # Flannel's choice: the IPv6 half's when there is one
        subnets = sort_nets([subnet for _f, subnet, _p, _d in halves])
        return (WgPeer(dev.name, key, endpoint, subnets, psk, keepalive),)

    def _endpoint_family(self, peer: Lease) -> int | None:
        attrs, ext = peer.attrs, self.ctx.ext
        mode = self.options.mode
        if mode == "ipv4":
            return 4 if not attrs.public_ip.is_unspecified else None
        if mode == "ipv6":
            return 6 if attrs.public_ipv6 is not None else None
        our4 = ext.public_ip if not ext.public_ip.is_unspecified else None
        return auto_family(attrs.public_ip, attrs.public_ipv6, our4, ext.public_ipv6)

    # -- drift watch and supervision ------------------------------------------------
    def start_watch(self, trigger: Callable[[], None]) -> Callable[[], None]:
        """Poll the processes and the devices' peers; trigger a full pass on drift."""
        stop = threading.Event()

        def body() -> None:
            while not stop.wait(POLL_SECONDS):
                try:
                    dead = [d.name for d in self.devices if not d.alive()]
                    if dead:
                        log.warning("wireguard-go for %s is gone", ", ".join(dead))
                        trigger()
                    elif self._peers is not None and self._peers.drifted():
                        log.info("WireGuard peers changed behind our back; repairing")
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
        """For /status, doctor and metrics: implementation, key file mode, per-peer handshakes.

        The top-level device fields are the first device's (flannel-wg, or
        flannel-wg-v6 on an IPv6-only network in Mode separate); ``devices``
        lists them all, and every peer names its device.
        """
        primary = self.devices[0]
        out: dict[str, Any] = {
            "implementation": primary.implementation,
            "device": primary.name,
            "mode": self.options.mode,
            "devices": [d.status() for d in self.devices],
        }
        if primary.wggo is not None:
            out["wireguard_go_pid"] = primary.wggo.pid
            out["wireguard_go_restarts"] = sum(
                d.wggo.restarts for d in self.devices if d.wggo is not None
            )
        if self.key is not None:
            out["public_key"] = self.key.public
            out["key_file"] = str(self.key.path)
            try:
                out["key_file_mode"] = oct(stat.S_IMODE(self.key.path.stat().st_mode))
            except OSError:
                out["key_file_mode"] = None  # missing: the next restart fails loudly
        peers = []
        now = time.time()
        for dev in self.devices:
            try:
                state = dev.control.get() if dev.control is not None else None
            except KernelError:
                state = None
            for p in state.peers if state else ():
                peers.append(
                    {
                        "device": dev.name,
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


def _endpoint(ip: IPv4Address | IPv6Address | None, port: int) -> str:
    """``ip:port``, ``[ipv6]:port``: how the UAPI and ``wg`` write an endpoint."""
    return f"[{ip}]:{port}" if isinstance(ip, IPv6Address) else f"{ip}:{port}"
