"""What the daemon derives per address family from the network config and its lease:
the admission rules for peer leases and the subnet.env it writes.

IPv4-only, dual-stack and IPv6-only networks differ only here and in the
backends: an IPv4 half is ruled and written when EnableIPv4 is set, an IPv6
half when EnableIPv6 is set (Flannel leaves the IPv4 lines out of subnet.env
in an IPv6-only network).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flannelish.backends.base import Backend, ExternalInterface
from flannelish.daemon.admission import AdmissionRules
from flannelish.daemon.iface import select_interface
from flannelish.daemon.options import DaemonOptions
from flannelish.kernel.netlink import AF_INET, AF_INET6, Netlink
from flannelish.subnet.config import NetworkConfig
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Lease
from flannelish.subnet_env import SubnetEnv

log = logging.getLogger("flannelish.daemon")


def underlay_for(nl: Netlink, opts: DaemonOptions, config: NetworkConfig) -> ExternalInterface:
    """The external interface, with an address of every family the network enables."""
    ext = select_interface(
        nl,
        opts.ifaces,
        opts.iface_regexes,
        opts.public_ip,
        opts.iface_can_reach,
        opts.public_ipv6,
        ipv4=config.enable_ipv4,
        ipv6=config.enable_ipv6,
    )
    log.info(
        "using interface",
        extra={
            "iface": ext.name,
            "address": ext.address,
            "public_ip": ext.public_ip,
            "public_ipv6": ext.public_ipv6,
        },
    )
    return ext


def admission_rules(
    config: NetworkConfig, backend: Backend, own_subnet: Callable[[], LeaseKey | None]
) -> AdmissionRules:
    """Peer leases must carry exactly the enabled families, each inside its network."""
    ext = backend.ctx.ext
    own_ips = {ext.public_ip, ext.address, ext.public_ipv6, ext.address6}
    return AdmissionRules(
        network=config.network if config.enable_ipv4 else None,
        subnet_len=config.subnet_len,
        own_ips=frozenset(ip for ip in own_ips if ip is not None and not ip.is_unspecified),
        own_subnet=own_subnet,
        validate=backend.validate,
        claims=backend.claims,
        ipv6_network=config.ipv6_network if config.enable_ipv6 else None,
        ipv6_subnet_len=config.ipv6_subnet_len,
    )


def subnet_env(config: NetworkConfig, key: LeaseKey, mtu: int, ipmasq: bool) -> SubnetEnv:
    """subnet.env as Flannel writes it; `mtu` is the backend's (in dual-stack the smaller
    tunnel's: pods get one MTU for both families)."""
    return SubnetEnv(
        network=config.network if config.enable_ipv4 else None,
        subnet=key.v4,
        mtu=mtu,
        ipmasq=ipmasq,
        ipv6_network=config.ipv6_network if config.enable_ipv6 else None,
        ipv6_subnet=key.v6,
    )


def family_counts(keys: Iterable[LeaseKey]) -> tuple[int, int]:
    """How many of these peers have an IPv4 half, and how many an IPv6 half."""
    v4 = v6 = 0
    for key in keys:
        v4 += key.v4 is not None
        v6 += key.v6 is not None
    return v4, v6


def family_report(
    backend: Any, config: NetworkConfig | None, lease: Lease | None, programmed: tuple[int, int]
) -> tuple[dict[str, int], list[str], dict[str, str | None], dict[str, dict[str, Any]]]:
    """For /status and /metrics: programmed peers per enabled family (``programmed``:
    the IPv4 and IPv6 counts, see family_counts), the overlay devices (VXLAN: one per
    family), our lease's IPv6 half, and per family the whole picture (`by_family`:
    subnet, network, public IP, device with its MTU and VTEP MAC, peers)."""
    v4 = config is None or config.enable_ipv4
    v6 = config is not None and config.enable_ipv6
    by_family = {}
    if v4:
        by_family["ipv4"] = programmed[0]
    if v6:
        by_family["ipv6"] = programmed[1]
    devices = [d.name for d in getattr(backend, "devices", ())]
    lease_v6: dict[str, str | None] = {}
    key = lease.key if lease is not None else None
    if v6 and config is not None:
        lease_v6 = {
            "ipv6_subnet": str(key.v6) if key is not None and key.v6 else None,
            "ipv6_network": str(config.ipv6_network),
            "public_ipv6": str(lease.attrs.public_ipv6) if lease is not None else None,
        }
    details: dict[str, dict[str, Any]] = {}
    for family, on in (("ipv4", v4), ("ipv6", v6)):
        if not on:
            continue
        ipv6 = family == "ipv6"
        subnet = (key.v6 if ipv6 else key.v4) if key is not None else None
        network = (config.ipv6_network if ipv6 else config.network) if config else None
        public = None
        if lease is not None:
            public = lease.attrs.public_ipv6 if ipv6 else lease.attrs.public_ip
        dev = _device_of(backend, AF_INET6 if ipv6 else AF_INET)
        details[family] = {
            "subnet": str(subnet) if subnet else None,
            "network": str(network) if network else None,
            "public_ip": str(public) if public is not None else None,
            "device": dev.name if dev is not None else None,
            "mtu": getattr(dev, "mtu", None) if dev is not None else getattr(backend, "mtu", None),
            "vtep_mac": getattr(dev, "mac", None) if dev is not None else None,
            "peers": by_family[family],
        }
    return by_family, devices, lease_v6, details


def _device_of(backend: Any, family: int) -> Any:
    """The backend's overlay device carrying this family, or None: VXLAN devices have a
    `family` (AF_INET/AF_INET6), WireGuard's the IP versions in `families`."""
    version = 6 if family == AF_INET6 else 4
    for dev in getattr(backend, "devices", ()):
        if getattr(dev, "family", None) == family or version in getattr(dev, "families", ()):
            return dev
    return None
