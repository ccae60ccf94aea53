"""What `flannelish doctor` knows about a node: :class:`NodeFacts` and :func:`collect`.

:func:`collect` reads the running system (``ip -j``, ``/proc/sys``, the nft
ruleset, ``iptables-legacy-save``, subnet.env, optionally the leases from
etcd) into plain data.  It is the only part of the doctor that needs root or
the kernel, and it never changes anything.  A fact that could not be gathered
is None, so the checks (flannelish.node.checks) can say so instead of
guessing; unit tests build NodeFacts by hand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from flannelish.cni.handler import POLICY_MARKER
from flannelish.errors import ConfigError, KernelError, NotAvailableError
from flannelish.kernel.nft import NftCli, NftRunner
from flannelish.node import flanneld_facts
from flannelish.node.flanneld_facts import FlanneldFacts
from flannelish.subnet.lease import Lease
from flannelish.subnet_env import SubnetEnv, read_subnet_env

SYSCTL_FORWARD = "net.ipv4.ip_forward"
SYSCTL_BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"
SYSCTL_BRIDGE_NF6 = "net.bridge.bridge-nf-call-ip6tables"


@dataclass(frozen=True)
class LinkFacts:
    name: str
    mtu: int
    kind: str = ""
    underlay: str | None = None  # vxlan: the `dev` it sends on
    port: int | None = None  # vxlan: dstport
    local: IPv4Address | None = None  # vxlan: local address


@dataclass
class WireguardFacts:
    implementation: str  # "kernel" | "userspace" | "none"
    kernel_module: bool  # /sys/module/wireguard exists
    wireguard_go_pid: int | None
    key_file: str
    key_file_mode: int | None  # None: missing
    peers: list[dict[str, Any]] = field(default_factory=list)  # allowed_ips, handshake, bytes
    error: str | None = None
    device: str = "flannel-wg"


@dataclass
class NodeFacts:
    subnet_env_path: str
    subnet_env: SubnetEnv | None = None
    subnet_env_error: str | None = None
    links: dict[str, LinkFacts] | None = None  # None: could not list links
    default_iface: str | None = None
    sysctls: dict[str, str | None] = field(default_factory=dict)  # None value: missing
    ruleset: list[dict[str, Any]] | None = None  # `nft -j list ruleset` items
    ruleset_error: str | None = None
    iptables_legacy: str | None = None  # `iptables-legacy-save -t filter`, if that exists
    leases: list[Lease] | None = None
    leases_error: str | None = None
    etcd_prefix: str = "/coreos.com/network"
    device: str | None = None  # explicit overlay device name
    renew_margin: float = 3600.0  # seconds; a live node renews before this
    now: float = field(default_factory=time.time)
    flanneld: FlanneldFacts | None = None  # flanneld processes and leftovers
    wireguard: WireguardFacts | None = None  # a flannel-wg device or key file on this node
    policy_marker: bool = False  # network policy in force (flannelish.policy's marker file)
    wireguard_v6: WireguardFacts | None = None  # flannel-wg-v6 beside flannel-wg (Mode separate)

    # -- derived -------------------------------------------------------------

    def overlay(self) -> LinkFacts | None:
        links = self.links or {}
        if self.device:
            return links.get(self.device)
        vx = [x for x in links.values() if x.kind == "vxlan" and x.name.startswith("flannel.")]
        return sorted(vx, key=lambda x: x.name)[0] if vx else None

    def overlay6(self) -> LinkFacts | None:
        """The IPv6 overlay device (``flannel-v6.<VNI>``) of a dual-stack or IPv6-only node."""
        links = self.links or {}
        vx = [x for x in links.values() if x.kind == "vxlan" and x.name.startswith("flannel-v6.")]
        return sorted(vx, key=lambda x: x.name)[0] if vx else None

    def underlay(self) -> LinkFacts | None:
        links = self.links or {}
        dev = self.overlay() or self.overlay6()
        name = dev.underlay if dev and dev.underlay else self.default_iface
        return links.get(name) if name else None

    def own_subnet(self) -> IPv4Network | None:
        return self.subnet_env.subnet if self.subnet_env else None


def _run(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def parse_links(doc: list[dict[str, Any]]) -> dict[str, LinkFacts]:
    """`ip -j -d link show` output -> LinkFacts by name."""
    links = {}
    for item in doc:
        info = item.get("linkinfo") or {}
        data = info.get("info_data") or {}
        kind = info.get("info_kind", "")
        local = data.get("local") if kind == "vxlan" else None
        links[item["ifname"]] = LinkFacts(
            name=item["ifname"],
            mtu=int(item.get("mtu", 0)),
            kind=kind,
            underlay=data.get("link") if kind == "vxlan" else None,
            port=int(data["port"]) if kind == "vxlan" and data.get("port") else None,
            local=IPv4Address(local) if local and ":" not in local else None,
        )
    return links


def read_sysctl(name: str, root: Path = Path("/proc/sys")) -> str | None:
    try:
        return (root / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def collect(
    subnet_file: str | Path,
    *,
    device: str | None = None,
    leases: Callable[[], list[Lease]] | None = None,
    etcd_prefix: str = "/coreos.com/network",
    renew_margin: float = 3600.0,
    nft: NftRunner | None = None,
) -> NodeFacts:
    """Gather facts from this network namespace (read-only)."""
    facts = NodeFacts(
        str(subnet_file), device=device, etcd_prefix=etcd_prefix, renew_margin=renew_margin
    )
    try:
        facts.subnet_env = read_subnet_env(subnet_file)
    except ConfigError as exc:
        facts.subnet_env_error = str(exc)
    try:
        result = _run(["ip", "-j", "-d", "link", "show"])
        if result.returncode == 0:
            facts.links = parse_links(json.loads(result.stdout))
        result = _run(["ip", "-j", "route", "show", "default"])
        if result.returncode == 0:
            routes = json.loads(result.stdout or "[]")
            facts.default_iface = routes[0].get("dev") if routes else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        facts.links = None
    facts.sysctls = {
        name: read_sysctl(name) for name in (SYSCTL_FORWARD, SYSCTL_BRIDGE_NF, SYSCTL_BRIDGE_NF6)
    }
    facts.policy_marker = (Path(subnet_file).parent / POLICY_MARKER).exists()
    try:
        facts.ruleset = (nft or NftCli()).listing("ruleset") or []
    except KernelError as exc:
        facts.ruleset_error = exc.details or exc.msg
    except (NotAvailableError, OSError, subprocess.TimeoutExpired) as exc:
        facts.ruleset_error = str(exc)
    if shutil.which("iptables-legacy-save"):
        try:
            result = _run(["iptables-legacy-save", "-t", "filter"])
            facts.iptables_legacy = result.stdout if result.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            facts.iptables_legacy = None
    overlay, overlay6 = facts.overlay(), facts.overlay6()
    facts.flanneld = flanneld_facts.collect(
        overlay.name if overlay else None,
        facts.own_subnet(),
        facts.ruleset,
        overlay6.name if overlay6 else None,
    )
    found = [
        collect_wireguard(Path(subnet_file).parent, facts.links, dev)
        for dev in ("flannel-wg", "flannel-wg-v6")
    ]
    present = [w for w in found if w is not None and w.implementation != "none"]
    # IPv6-only in Mode separate: flannel-wg-v6 alone is the node's device.
    facts.wireguard = present[0] if present else found[0]
    facts.wireguard_v6 = present[1] if len(present) > 1 else None
    if leases is not None:
        try:
            facts.leases = leases()
        except Exception as exc:  # any etcd failure only disables the lease checks
            facts.leases_error = f"etcd: {exc}"
    return facts


def collect_wireguard(
    state_dir: Path, links: dict[str, LinkFacts] | None, dev: str = "flannel-wg"
) -> WireguardFacts | None:
    """WireGuard facts when this node runs the wireguard backend (a flannel-wg, a key file)."""
    import os
    import stat as stat_mod

    from flannelish.kernel.wireguard import UapiControl, WgToolControl
    from flannelish.kernel.wireguard_go import node_wireguard_go

    key_file = os.environ.get("WIREGUARD_KEY_FILE") or "/run/flannel/wgkey"
    link = (links or {}).get(dev)
    go = node_wireguard_go(state_dir, dev)
    # The key marker (one key for both devices) says the node runs the backend.
    marker = dev == "flannel-wg" and (state_dir / "flannel-wg.pubkey").exists()
    if link is None and go is None and not marker:
        return None
    try:
        mode: int | None = stat_mod.S_IMODE(os.stat(key_file).st_mode)
    except OSError:
        mode = None
    impl = "kernel" if link is not None and link.kind == "wireguard" else "none"
    if go is not None:
        impl = "userspace"
    facts = WireguardFacts(
        implementation=impl,
        kernel_module=Path("/sys/module/wireguard").exists(),
        wireguard_go_pid=go.pid if go else None,
        key_file=key_file,
        key_file_mode=mode,
        device=dev,
    )
    try:
        if go is not None:
            state = UapiControl(go.socket_path()).get()
        elif impl == "kernel":
            state = WgToolControl(dev).get()
        else:
            return facts
    except Exception as exc:  # a device we cannot read: reported, not fatal
        facts.error = str(exc)
        return facts
    for p in state.peers:
        facts.peers.append(
            {
                "allowed_ips": ", ".join(map(str, p.allowed_ips)),
                "endpoint": p.endpoint,
                "last_handshake": p.last_handshake,
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
            }
        )
    return facts
