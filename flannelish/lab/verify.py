"""`flannelish verify`: prove with a packet capture what crosses the underlay.

1. start probe servers in the destination pods,
2. start the scapy capture on the underlay bridge (inside the underlay ns),
3. generate cross-node ICMP (including one echo exactly at the overlay MTU
   with DF set), TCP (enough bytes for full-size segments) and UDP, and
   same-node ICMP and TCP,
4. stop the capture and hand the frames to analysis.analyze().

The nodes keep their segmentation offloads on; for steps 2-4 only, each
node's eth0 segments in software (flannelish.lab.offloads), as a physical
NIC does before the wire, and the settings are restored afterwards.

The flows we generate become the expectation: every one of them must be
seen (inside VXLAN for the vxlan backend), and no same-node flow may be.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

from flannelish.errors import FlannelishError
from flannelish.lab import names, procs
from flannelish.lab.analysis import (
    FAIL,
    PASS,
    Analysis,
    Expected,
    Flow,
    Verdict,
    analyze_by_family,
)
from flannelish.lab.capture import READY
from flannelish.lab.check import ProbeServer, ask
from flannelish.lab.offloads import segmentation_off
from flannelish.lab.state import LabState, PodState
from flannelish.testing.proc import in_netns, run

TCP_BYTES = 20_000  # > a few MSS, so full-size segments cross the overlay
ICMP_HEADERS = {4: 28, 6: 48}  # IPv4 20 + ICMP 8; IPv6 40 + ICMPv6 8


@dataclass
class VerifyReport:
    analysis: Analysis
    pcap: Path
    generated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    hop_dir: Path | None = None  # per-hop pcaps and flows.json, with --report
    hop_seconds: float = 0.0  # starting and stopping the per-hop capture

    @property
    def ok(self) -> bool:
        return self.analysis.ok


class Capture:
    """The capture subprocess in the underlay namespace; always stopped."""

    def __init__(self, netns: str, iface: str, out: Path) -> None:
        self.argv = in_netns(netns, [sys.executable, "-m", "flannelish.lab.capture",
                                     "--iface", iface, "--out", str(out)])  # fmt: skip
        self.out = out
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Capture:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != READY:
            self.stop()
            raise FlannelishError("the capture did not start", self._stderr() or line)
        return self

    def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().strip()

    def stop(self) -> None:
        """Close its stdin (it then writes the pcap and exits)."""
        if self.proc is None:
            return
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        err = self._stderr()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        code, self.proc = self.proc.returncode, None
        if code != 0:
            raise FlannelishError("the capture failed", err or f"exit status {code}")

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _both(a: PodState, b: PodState, proto: str, family: int = 4) -> set[Flow]:
    src, dst = ip_address(a.addr(family)), ip_address(b.addr(family))
    return {Flow(src, dst, proto), Flow(dst, src, proto)}


@dataclass
class _Plan:
    cross: list[tuple[PodState, PodState]]
    same: list[tuple[PodState, PodState]]

    @property
    def servers(self) -> list[PodState]:
        seen: dict[str, PodState] = {}
        for _, dst in self.cross + self.same:
            seen.setdefault(dst.name, dst)
        return list(seen.values())


def plan(state: LabState) -> _Plan:
    """One pod pair per pair of nodes, plus one pair inside every node with two pods."""
    firsts = [pods[0] for n in state.nodes if (pods := [p for p in state.pods_of(n.name) if p.ip])]
    cross = list(itertools.combinations(firsts, 2))
    same = []
    for node in state.nodes:
        pods = [p for p in state.pods_of(node.name) if p.ip]
        if len(pods) >= 2:
            same.append((pods[0], pods[1]))
    return _Plan(cross, same)


def _ping(src: PodState, dst: PodState, size: int | None = None, family: int = 4) -> str:
    argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", dst.addr(family)]
    if size is not None:
        argv[1:1] = ["-M", "do", "-s", str(size)]
    result = run(argv, netns=src.netns, check=False, timeout=15)
    if result.returncode != 0:
        what = f"ping -s {size}" if size else "ping"
        return f"{what} {src.name}->{dst.name} failed: {result.stdout.strip().splitlines()[-1:]}"
    return ""


def _probe(src: PodState, dst: PodState, proto: str, size: int, family: int = 4) -> str:
    seen, error = ask(src, dst, proto, size, family=family)
    what = f"{proto}{'6' if family == 6 else ''} {src.name}->{dst.name}"
    if error:
        return f"{what}: {error}"
    if seen != src.addr(family):
        return f"{what}: server saw {seen}, not {src.addr(family)} (NAT)"
    return ""


def generate(state: LabState, p: _Plan, mtu: int) -> tuple[set[Flow], set[Flow], list[str]]:
    """Run the traffic in every family of the lab; returns (cross-node flows,
    same-node flows, generator errors)."""
    jobs: list[tuple[Any, ...]] = []
    cross: set[Flow] = set()
    same: set[Flow] = set()
    for f in state.spec.families:
        for i, (a, b) in enumerate(p.cross):
            jobs += [(_ping, a, b, None, f), (_probe, a, b, "tcp", TCP_BYTES, f),
                     (_probe, a, b, "udp", 512, f)]  # fmt: skip
            cross |= _both(a, b, "icmp", f) | _both(a, b, "tcp", f) | _both(a, b, "udp", f)
            if i == 0 and mtu > ICMP_HEADERS[f]:
                # inner packet == overlay MTU exactly
                jobs.append((_ping, a, b, mtu - ICMP_HEADERS[f], f))
        for a, b in p.same:
            jobs += [(_ping, a, b, None, f), (_probe, a, b, "tcp", TCP_BYTES, f)]
            same |= _both(a, b, "icmp", f) | _both(a, b, "tcp", f)
    with ThreadPoolExecutor(max_workers=6) as pool:
        errors = [e for e in pool.map(lambda job: job[0](*job[1:]), jobs) if e]
    return cross, same, errors


def _underlay_mtu(state: LabState) -> int:
    result = run(["cat", "/sys/class/net/br0/mtu"], netns=state.underlay_netns, check=False)
    return int(result.stdout.strip() or 1500)


def _device_mtu(state: LabState, family: int) -> int:
    """The smallest MTU of the family's VXLAN device (flannel.N or flannel-v6.N) over
    the nodes: inner packets of that family must fit it (0 when not found)."""
    device = f"{'flannel-v6' if family == 6 else 'flannel'}.{state.spec.vni}"
    found = []
    for node in state.nodes:
        out = run(["cat", f"/sys/class/net/{device}/mtu"], netns=node.netns, check=False).stdout
        if out.strip().isdigit():
            found.append(int(out))
    return min(found, default=0)


def expected_for(state: LabState, cross: set[Flow], same: set[Flow], family: int = 4) -> Expected:
    """What family `family`'s traffic must look like on the underlay."""
    spec = state.spec
    pod_mtu = min((n.mtu for n in state.nodes if n.mtu), default=1450)
    # The family's own MTU: its VXLAN device's (IPv6 tunnels carry 20 bytes more).
    overlay_mtu = (_device_mtu(state, family) if spec.backend == "vxlan" else 0) or pod_mtu
    return Expected(
        backend=spec.backend,
        pod_network=ip_network(spec.network6 if family == 6 else spec.network),
        vni=spec.vni,
        port=spec.tunnel_port(family),
        overlay_mtu=overlay_mtu,
        underlay_mtu=_underlay_mtu(state),
        node_subnets={
            ip_address(n.addr(family)): ip_network(n.subnet_of(family))
            for n in state.nodes
            if n.addr(family) and n.subnet_of(family)
        },
        pod_ips=frozenset(ip_address(p.addr(family)) for p in state.pods if p.addr(family)),
        cross_node=frozenset(f for f in cross if f.src.version == family),
        same_node=frozenset(f for f in same if f.src.version == family),
    )


def analyze_families(state: LabState, frames: list[bytes], cross: set[Flow],
                     same: set[Flow]) -> Analysis:  # fmt: skip
    """One analysis per family of the lab over the same capture; in dual and IPv6 labs,
    every verdict and count names its family ("IPv6: VNI 1 on every VXLAN packet")."""
    return analyze_by_family(
        frames, [expected_for(state, cross, same, f) for f in state.spec.families]
    )


def read_frames(path: Path) -> list[bytes]:
    from scapy.utils import RawPcapReader

    with RawPcapReader(str(path)) as reader:
        return [bytes(data) for data, _meta in reader]


def verify(state: LabState, pcap: Path | None = None, hop_dir: Path | None = None) -> VerifyReport:
    """Generate traffic, capture the underlay, judge it.  With `hop_dir`, also capture
    every hop of the report's journey flows there (flannelish.lab.report)."""
    for rec in state.procs():
        if not procs.is_ours(rec):
            raise FlannelishError(
                f"{rec.role} (pid {rec.pid}) is not running", "run `flannelish lab status`"
            )
    p = plan(state)
    mtu = min((n.mtu for n in state.nodes if n.mtu), default=1450)
    out = state.path / "verify" / "capture.pcap"
    servers = [ProbeServer(pod) for pod in p.servers]
    hops: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if hop_dir is not None:
        from flannelish.lab.report import HopCapture, journey_flows

        flows = journey_flows(state, p.cross, p.same)
        if flows:  # none in a lab of one node with one pod
            hops = HopCapture(hop_dir, flows)
    try:
        for server in servers:
            server.__enter__()
        # Wire-sized frames on the underlay for the capture only; restored after.
        with (
            segmentation_off(n.netns for n in state.nodes),
            Capture(state.underlay_netns, "br0", out),
            hops,
        ):
            cross, same, errors = generate(state, p, mtu)
            # Let the last replies cross the bridge before the capture stops.
            time.sleep(0.2)
    finally:
        for server in servers:
            server.__exit__()
    analysis = analyze_families(state, read_frames(out), cross, same)
    name = "pod traffic was delivered (ping, TCP, UDP probes)"
    if errors:
        analysis.verdicts.insert(0, Verdict(name, FAIL, "; ".join(errors[:3])))
    else:
        pairs = f"{len(p.cross)} cross-node and {len(p.same)} same-node pod pairs"
        analysis.verdicts.insert(0, Verdict(name, PASS, pairs))
    if state.spec.backend == "wireguard":
        families = state.spec.families
        for family in families:
            verdict = handshake_verdict(state, family)
            if families != (4,):
                verdict.name = f"IPv{family}: {verdict.name}"
            analysis.verdicts.append(verdict)
    if pcap is not None:
        pcap.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, pcap)
    generated = [f"{a.name}->{b.name}" for a, b in p.cross + p.same]
    hop_seconds = float(getattr(hops, "seconds", 0.0))
    return VerifyReport(analysis, pcap or out, generated, errors, hop_dir, hop_seconds)


def handshake_verdict(state: LabState, family: int = 4) -> Verdict:
    """WireGuard: every node completed a handshake with every peer on the family's
    device (flannel-wg, flannel-wg-v6), each peer dialled at its public address
    of that family."""
    from flannelish.kernel.wireguard_go import node_device_state

    device = names.wireguard_device(family)
    name = "every node completed a WireGuard handshake with every peer"
    bad = []
    pairs = 0
    for node in state.nodes:
        dev = node_device_state(Path(node.subnet_file).parent, device)
        if dev is None:
            bad.append(f"{node.name}: no wireguard-go device {device}")
            continue
        peers = {endpoint_host(p.endpoint): p for p in dev.peers}
        for other in state.nodes:
            if other is node:
                continue
            p = peers.get(other.addr(family))
            if p is None:
                bad.append(f"{node.name} has no peer {other.name} at {other.addr(family)}")
            elif not p.last_handshake:
                bad.append(f"{node.name}: no handshake with {other.name}")
            else:
                pairs += 1
    if bad:
        return Verdict(name, FAIL, _examples_of(bad))
    return Verdict(name, PASS, f"{pairs} node-to-peer handshakes on {device}")


def endpoint_host(endpoint: str) -> str:
    """The address of a WireGuard endpoint: ``198.18.0.2:51820`` -> ``198.18.0.2``,
    ``[fd18::2]:51821`` -> ``fd18::2``."""
    host = endpoint.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _examples_of(items: list[str]) -> str:
    return "; ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
