"""The host-gw backend: per peer one plain route to its subnet via its PublicIP
(and, in IPv6 networks, one to its IPv6 subnet via its PublicIPv6).

Design (docs/flannel-compat.md §8, with one fix):

* No device: pods' packets are routed unencapsulated to the peer's underlay
  address, so every node must sit on the same L2 segment as its peers.  MTU
  = external interface MTU.  PublicIP must be the interface's own address
  (a NATed address cannot be a next hop): start-up fails otherwise.
* Per peer S (subnet), P (PublicIP): route ``S via P dev <ext>`` marked with
  the daemon's route protocol, applied and removed by the reconciler like
  every other owned object, so foreign routes are never touched.
* Flannel adds the route anyway when P is not on-link and the kernel rejects
  it, or it silently black-holes.  Here a peer whose PublicIP is not inside
  a prefix configured on the external interface gets *no* route, and a
  warning naming it is logged again every ``WARN_INTERVAL`` seconds while it
  lasts (operators miss a one-off line).  On-link is judged from the
  interface's connected prefixes (flannelish.backends.onlink, shared with
  VXLAN DirectRouting), re-read on every base check, so readdressing
  converges without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from flannelish.backends.base import Backend, BackendContext
from flannelish.backends.onlink import OnLink

from flannelish.errors import ConfigError
from flannelish.kernel.netlink import AF_INET, AF_INET6, Route
from flannelish.kernel.resources import Resource, RouteResource, Skip
from flannelish.subnet.lease import Lease, LeaseAttrs

log = logging.getLogger("flannelish.hostgw")

V6_METRIC = 1024  # the kernel's default metric of an IPv6 route (what a dump reads back)
WARN_INTERVAL = 30.0  # seconds between repeated warnings about one off-link peer


class HostGwBackend(Backend):
    backend_type = "host-gw"

    def __init__(self, ctx: BackendContext, clock: Any = time.monotonic) -> None:
        super().__init__(ctx)
        self._clock = clock
        config = ctx.network
        self.ipv4 = bool(getattr(config, "enable_ipv4", True))
        self.ipv6 = bool(getattr(config, "enable_ipv6", False))
        families = [f for f, on in ((AF_INET, self.ipv4), (AF_INET6, self.ipv6)) if on]
        self._routes: list[Resource] = [RouteResource(ctx.netlink, families=families)]
        self._onlink = OnLink(ctx.netlink, ctx.ext.index)
        self._warned: dict[Any, float] = {}
        self.lease: Lease | None = None

    @property
    def mtu(self) -> int:
        return self.ctx.ext.mtu

    def setup(self) -> None:
        ext = self.ctx.ext
        if self.ipv6 and ext.public_ipv6 != ext.address6:
            raise ConfigError(
                f"public IPv6 {ext.public_ipv6} differs from {ext.name}'s address {ext.address6}",
                "the host-gw backend routes to the peers' interface addresses; drop --public-ipv6",
            )
        if self.ipv4 and ext.public_ip != ext.address:
            raise ConfigError(
                f"public IP {ext.public_ip} differs from {ext.name}'s address {ext.address}",
                "that means NAT, which the host-gw backend cannot route through; "
                "use the vxlan backend or drop --public-ip",
            )
        self._refresh_prefixes()

    def lease_attrs(self) -> LeaseAttrs:
        ext = self.ctx.ext
        return LeaseAttrs(
            public_ip=ext.public_ip,
            backend_type=self.backend_type,
            public_ipv6=ext.public_ipv6 if self.ipv6 else None,
        )

    def bind_lease(self, lease: Lease) -> None:
        self.lease = lease

    def ensure_base(self) -> bool:
        # Nothing to rebuild; refresh which underlay prefixes are on-link.
        self._refresh_prefixes()
        return False

    def _refresh_prefixes(self) -> None:
        self._onlink.refresh()

    def on_link(self, ip: IPv4Address | IPv6Address) -> bool:
        return ip in self._onlink

    def resources(self) -> Sequence[Resource]:
        return self._routes

    def validate(self, peer: Lease) -> Skip | None:
        if peer.attrs.backend_type != self.backend_type:
            kind = peer.attrs.backend_type or "none"
            return Skip(f"backend type {kind!r}, we use host-gw", "backend-type")
        return None

    def plan(self, peer: Lease) -> Sequence[Any] | Skip:
        attrs = peer.attrs
        skip = self.validate(peer)
        if skip is not None:
            return skip
        key, out = peer.key, []
        for subnet, via, name in (
            (key.v4 if self.ipv4 else None, attrs.public_ip, "PublicIP"),
            (key.v6 if self.ipv6 else None, attrs.public_ipv6, "PublicIPv6"),
        ):
            if subnet is None:
                continue
            if via is None or not self.on_link(via):
                reason = (
                    f"{name} {via} is not on-link on {self.ctx.ext.name}: "
                    "host-gw needs all nodes on one L2 segment"
                )
                self._warn_off_link(peer, reason)
                return Skip(reason, "off-link")
            metric = V6_METRIC if subnet.version == 6 else None
            out.append(Route(subnet, via, self.ctx.ext.index, priority=metric))
        self._warned.pop(peer.key, None)
        return tuple(out)

    def _warn_off_link(self, peer: Lease, reason: str) -> None:
        now = self._clock()
        last = self._warned.get(peer.key)
        if last is None or now - last >= WARN_INTERVAL:
            self._warned[peer.key] = now
            log.warning(
                "peer %s gets no route: %s",
                peer.key,
                reason,
                extra={"peer": str(peer.key), "public_ip": str(peer.attrs.public_ip)},
            )
