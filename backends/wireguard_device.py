"""One WireGuard device of the wireguard backend: ``flannel-wg`` or ``flannel-wg-v6``.

The device exists (kernel WireGuard, or a supervised wireguard-go), carries our
private key and listen port, has the MTU, one address per family it carries
(``<our subnet's network address>/32`` or ``/128``) and one route per family
for the whole pod network via the device (our route protocol; a foreign route
to the network is left alone and logged once).  Peers are not its business:
:class:`flannelish.kernel.wireguard.WgPeerResource` writes them through
:attr:`WgDevice.control`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from flannelish.errors import KernelError
from flannelish.kernel.netlink import AF_INET, AF_INET6, ROUTE_PROTO, Addr, Route, RouteExists
from flannelish.kernel.wireguard import UapiControl, WgControl, WgToolControl
from flannelish.kernel.wireguard_go import WireguardGo, kernel_wireguard_available
from flannelish.kernel.wireguard_keys import NodeKey, b64_to_hex, clamp_hex

log = logging.getLogger("flannelish.wireguard")

PRIVATE_RUN_ENV = "FLANNELISH_WG_PRIVATE_RUN"  # "1": wireguard-go in a private mount namespace
V6_METRIC = 1024  # what the kernel reports for an IPv6 route written without a metric

Net = IPv4Network | IPv6Network


class WgDevice:
    """A WireGuard device carrying the families in ``families`` (4, 6 or both)."""

    def __init__(
        self, nl: Any, name: str, port: int, families: tuple[int, ...], mtu: int, state_dir: Path
    ) -> None:
        self._nl = nl
        self.name = name
        self.port = port
        self.families = families
        self.mtu = mtu
        self.state_dir = state_dir
        self.implementation = ""  # "kernel" | "userspace (wireguard-go)"
        self.wggo: WireguardGo | None = None
        self.control: WgControl | None = None
        self.index: int | None = None
        self._conflicts: set[Net] = set()  # foreign routes in the way, logged once each

    def choose(self, force_userspace: bool | None) -> None:
        """Kernel WireGuard where it works, else wireguard-go (decided once, at start-up)."""
        link = self._nl.link(self.name)
        kernel = False
        if force_userspace is not True:
            if link is not None and link.kind == "wireguard":
                kernel = True
            elif link is None or link.kind != "tun":
                kernel = force_userspace is False or kernel_wireguard_available(self.name)
        if kernel:
            self.implementation = "kernel"
            self.control = WgToolControl(self.name)
        else:
            self.implementation = "userspace (wireguard-go)"
            private = os.environ.get(PRIVATE_RUN_ENV, "") == "1"
            self.wggo = WireguardGo(self.name, self.state_dir, private)
            self.control = UapiControl(self.wggo.socket_path)

    def ensure(self, key: NodeKey, up: bool) -> bool:
        """The device exists and carries our key, port and MTU; True if it is new."""
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
        assert self.control is not None
        state = self.control.get()
        want = b64_to_hex(key.private)
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
        if rebuilt and 6 in self.families:  # all its state is programmed: no router adverts
            self._nl.sysctl(f"net.ipv6.conf.{self.name}.accept_ra", "0")
        self.index = link.index
        if link.mtu != self.mtu or (up and not link.up):
            self._nl.set_link(
                link.index,
                mtu=self.mtu if link.mtu != self.mtu else None,
                up=True if up and not link.up else None,
            )
        return rebuilt

    def ensure_address_and_route(self, subnet: Net | None, network: Net | None) -> None:
        """One family: our address on the device and the network's route via it."""
        if subnet is None or self.index is None:
            return
        v6 = isinstance(subnet, IPv6Network)
        want = Addr(self.index, subnet.network_address, subnet.max_prefixlen)
        have = self._nl.addrs(self.index, AF_INET6 if v6 else AF_INET)
        for addr in have:
            if addr == want or addr.address.is_link_local:
                continue
            if network is None or addr.address in network or v6:
                self._nl.del_addr(addr)
        if want not in have:
            self._nl.add_addr(want)
        if network is None:
            return
        route = Route(network, None, self.index, priority=V6_METRIC if v6 else None)
        family = AF_INET6 if v6 else AF_INET
        ours = [r for r in self._nl.routes(ROUTE_PROTO, family) if r.dst == network]
        if ours == [route]:
            return
        try:
            if ours:
                self._nl.replace_route(route)
            else:
                self._nl.add_route(route)
            log.info("set network route", extra={"dst": str(network), "dev": self.name})
            self._conflicts.discard(network)
        except RouteExists:
            if network not in self._conflicts:
                self._conflicts.add(network)
                log.error(
                    "a route to %s that flannelish does not own is in the way; left alone "
                    "(pod traffic to peers will not use %s)",
                    network,
                    self.name,
                )

    def alive(self) -> bool:
        return self.wggo is None or self.wggo.alive()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.name,
            "implementation": self.implementation,
            "listen_port": self.port,
            "families": [f"ipv{f}" for f in self.families],
        }
        if self.wggo is not None:
            out["wireguard_go_pid"] = self.wggo.pid
            out["wireguard_go_restarts"] = self.wggo.restarts
        return out
