"""`flannelish verify --report DIR`: the flows to follow, the per-hop capture, the report.

While `verify` generates its traffic, `HopCapture` records every hop of four
flows per IP family of the lab (one cross-node flow per protocol, ICMP, TCP
and UDP, and one same-node flow) in one `flannelish.lab.hops` process: the
source pod's eth0, its node's cni0, the family's tunnel device
(flannel.<VNI> or flannel-v6.<VNI> for VXLAN, flannel-wg or flannel-wg-v6
for WireGuard, none for host-gw) and eth0, the underlay bridge, and the same
in reverse on the destination node.  Afterwards `write_report` follows one packet of each
flow through those captures (`journey.build`), draws the lab (`diagram`) and
writes ``DIR/index.html`` (self-contained: inline CSS and SVG, no script, no
network) next to ``DIR/pcaps/<hop>.pcap`` and ``DIR/pcaps/flows.json``.
"""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flannelish.errors import FlannelishError
from flannelish.lab import journey as jr
from flannelish.lab import names
from flannelish.lab.hops import READY
from flannelish.lab.probe import DEFAULT_PORT
from flannelish.lab.state import LabState, NodeState, PodState

PCAPS = "pcaps"
FLOWS_FILE = "flows.json"


def _pod_hop(pod: PodState, role: str) -> jr.Hop:
    return jr.Hop(
        f"{pod.name}-{pod.ifname}",
        f"{pod.name} {pod.ifname} (pod)",
        pod.netns,
        pod.ifname,
        role,
        pod.node,
        pcap=f"{PCAPS}/{pod.name}-{pod.ifname}.pcap",
    )


def _node_hop(node: NodeState, iface: str, what: str, role: str, seen: bool = True) -> jr.Hop:
    key = f"{node.name}-{iface}"
    return jr.Hop(
        key,
        f"{node.name} {iface} ({what})",
        node.netns,
        iface,
        role,
        node.name,
        pcap=f"{PCAPS}/{key}.pcap",
        expect_seen=seen,
    )


def _wire_hop(state: LabState) -> jr.Hop:
    key = f"underlay-{names.BRIDGE}"
    return jr.Hop(
        key,
        f"underlay {names.BRIDGE} (the wire)",
        state.underlay_netns,
        names.BRIDGE,
        jr.WIRE,
        pcap=f"{PCAPS}/{key}.pcap",
    )


def tunnel_device(state: LabState, family: int) -> tuple[str, str] | None:
    """(device, what it is) carrying the family's pod packets off the node, if any."""
    backend = state.spec.backend
    if backend == "vxlan":
        prefix = "flannel-v6" if family == 6 else "flannel"
        return f"{prefix}.{state.spec.vni}", "VXLAN device"
    if backend == "wireguard":
        # The lab's WireGuard runs Mode separate: one device per family.
        return names.wireguard_device(family), "WireGuard device"
    return None


def cross_hops(state: LabState, a: PodState, b: PodState, family: int = 4) -> tuple[jr.Hop, ...]:
    src, dst = state.node(a.node), state.node(b.node)
    assert src is not None and dst is not None
    tunnel = tunnel_device(state, family)
    hops = [_pod_hop(a, jr.POD_SRC), _node_hop(src, "cni0", "bridge", jr.BRIDGE_SRC)]
    if tunnel:
        hops.append(_node_hop(src, *tunnel, jr.TUNNEL_SRC))
    hops += [
        _node_hop(src, "eth0", "underlay", jr.UNDERLAY_SRC),
        _wire_hop(state),
        _node_hop(dst, "eth0", "underlay", jr.UNDERLAY_DST),
    ]
    if tunnel:
        hops.append(_node_hop(dst, *tunnel, jr.TUNNEL_DST))
    hops += [_node_hop(dst, "cni0", "bridge", jr.BRIDGE_DST), _pod_hop(b, jr.POD_DST)]
    return tuple(hops)


def same_hops(state: LabState, a: PodState, b: PodState, family: int = 4) -> tuple[jr.Hop, ...]:
    node = state.node(a.node)
    assert node is not None
    hops = [_pod_hop(a, jr.POD_SRC), _node_hop(node, "cni0", "bridge", jr.BRIDGE_SRC)]
    tunnel = tunnel_device(state, family)
    if tunnel:
        hops.append(_node_hop(node, *tunnel, jr.TUNNEL_SRC, seen=False))
    hops += [
        _node_hop(node, "eth0", "underlay", jr.UNDERLAY_SRC, seen=False),
        _pod_hop(b, jr.POD_DST),
    ]
    return tuple(hops)


def journey_flows(
    state: LabState, cross: list[tuple[PodState, PodState]], same: list[tuple[PodState, PodState]]
) -> list[jr.FlowSpec]:
    """Per IP family of the lab: one cross-node flow per protocol (the first cross-node
    pair) and one same-node flow.  IPv4 flows are icmp-cross, ...; IPv6 ones icmp6-cross."""
    flows: list[jr.FlowSpec] = []
    families = state.spec.families
    for family in families:
        tag = "6" if family == 6 else ""
        named = f"IPv{family} " if families != (4,) else ""
        flows += _family_flows(state, cross, same, family, tag, named)
    return flows


def _family_flows(
    state: LabState,
    cross: list[tuple[PodState, PodState]],
    same: list[tuple[PodState, PodState]],
    family: int,
    tag: str,
    named: str,
) -> list[jr.FlowSpec]:
    flows: list[jr.FlowSpec] = []
    backend = state.spec.backend

    def node_ip(pod: PodState) -> str:
        node = state.node(pod.node)
        return node.addr(family) if node is not None else ""

    if cross:
        a, b = cross[0]
        hops = cross_hops(state, a, b, family)
        for proto, what in (
            ("icmp", "ping (the MTU-sized echo request)"),
            ("tcp", "TCP (the first data segment)"),
            ("udp", "UDP (the probe's datagram)"),
        ):
            flows.append(
                jr.FlowSpec(
                    id=f"{proto}{tag}-cross",
                    title=f"{named}{what}: {a.name} → {b.name}, across nodes",
                    proto=proto,
                    src=a.addr(family),
                    dst=b.addr(family),
                    src_pod=a.name,
                    dst_pod=b.name,
                    same_node=False,
                    backend=backend,
                    port=0 if proto == "icmp" else DEFAULT_PORT,
                    hops=hops,
                    family=family,
                    src_node_ip=node_ip(a),
                    dst_node_ip=node_ip(b),
                    tunnel_port=state.spec.tunnel_port(family),
                )
            )
    if same:
        first_node = cross[0][0].node if cross else ""
        a, b = next((pair for pair in same if pair[0].node == first_node), same[0])
        flows.append(
            jr.FlowSpec(
                id=f"icmp{tag}-same",
                title=f"{named}ping: {a.name} → {b.name}, on the same node",
                proto="icmp",
                src=a.addr(family),
                dst=b.addr(family),
                src_pod=a.name,
                dst_pod=b.name,
                same_node=True,
                backend=backend,
                hops=same_hops(state, a, b, family),
                family=family,
                src_node_ip=node_ip(a),
                dst_node_ip=node_ip(b),
                tunnel_port=state.spec.tunnel_port(family),
            )
        )
    return flows


def capture_points(flows: list[jr.FlowSpec]) -> dict[str, jr.Hop]:
    points: dict[str, jr.Hop] = {}
    for flow in flows:
        for hop in flow.hops:
            points.setdefault(hop.key, hop)
    return points


class HopCapture:
    """`python -m flannelish.lab.hops` over every hop of `flows`; always stopped."""

    def __init__(self, out: Path, flows: list[jr.FlowSpec]) -> None:
        self.out = out
        self.flows = flows
        hops = [
            f"--hop={key}={hop.netns}:{hop.iface}" for key, hop in capture_points(flows).items()
        ]
        self.argv = [sys.executable, "-m", "flannelish.lab.hops", "--out", str(out), *hops]
        self.proc: subprocess.Popen[str] | None = None
        self.seconds = 0.0  # what starting and stopping it cost (waiting for it, not traffic)

    def __enter__(self) -> HopCapture:
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        # Only what an earlier report wrote here goes: never a whole directory.
        for stale in [*self.out.glob("*.pcap"), self.out / FLOWS_FILE, self.out / "hops.json"]:
            stale.unlink(missing_ok=True)
        jr.save_flows(self.out / FLOWS_FILE, self.flows)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != READY:
            err = self._finish(kill=True)
            raise FlannelishError("the per-hop capture did not start", err or line)
        self.seconds += time.monotonic() - started
        return self

    def _finish(self, kill: bool = False) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        if kill:
            proc.kill()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        err = proc.stderr.read().strip() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc.returncode != 0 and not kill:
            raise FlannelishError("the per-hop capture failed", err or f"exit {proc.returncode}")
        return err

    def __exit__(self, *exc: object) -> None:
        started = time.monotonic()
        try:
            self._finish()
        finally:
            self.seconds += time.monotonic() - started


@dataclass
class ReportResult:
    index: Path
    journeys: list[jr.Journey] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(j.ok for j in self.journeys)


def build_journeys(pcap_dir: Path, port: int) -> list[jr.Journey]:
    """Every flow recorded in pcap_dir/flows.json, followed through its per-hop pcaps
    (`port`: the tunnel's UDP port, `LabSpec.tunnel_port`, for flows that do not name their own)."""
    import json

    if not (pcap_dir / FLOWS_FILE).exists():
        return []
    flows = jr.load_flows(pcap_dir / FLOWS_FILE)
    frames = jr.load_frames(pcap_dir, flows)
    facts_path = pcap_dir / "hops.json"
    facts: dict[str, Any] = json.loads(facts_path.read_text()) if facts_path.exists() else {}
    flows = [_with_facts(f, facts) for f in flows]
    return [jr.build(flow, frames, port) for flow in flows]


def _with_facts(flow: jr.FlowSpec, facts: dict[str, Any]) -> jr.FlowSpec:
    """Hops with the MTU, MAC and link type the capture read from each interface."""
    from dataclasses import replace

    hops = tuple(
        replace(
            h,
            mtu=int(facts.get(h.key, {}).get("mtu", h.mtu) or 0),
            mac=str(facts.get(h.key, {}).get("mac", h.mac) or ""),
            link=str(facts.get(h.key, {}).get("link", h.link) or "ether"),
        )
        for h in flow.hops
    )
    return replace(flow, hops=hops)


def write_report(state: LabState, verify_report: Any, directory: Path) -> ReportResult:
    """DIR/index.html from a finished verify (its per-hop pcaps are in DIR/pcaps)."""
    from flannelish.lab import diagram, reporthtml

    started = time.monotonic()
    journeys = build_journeys(directory / PCAPS, state.spec.tunnel_port())
    try:
        topo = diagram.gather(state)
        svg = diagram.inline_svg(topo)
    except FlannelishError as exc:
        topo, svg = None, f'<p class="error">no diagram: {exc}</p>'
    (directory / PCAPS).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(verify_report.pcap, directory / PCAPS / "underlay-all.pcap")
    html = reporthtml.render(state, verify_report, journeys, svg, topo)
    index = directory / "index.html"
    index.write_text(html)
    return ReportResult(index, journeys, time.monotonic() - started)
