"""The lab diagram's content and the report page, without a lab: a recorded state,
made-up daemon views (a skipped peer, a daemon that is down) and the recorded journeys."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest

from flannelish.lab import diagram, reporthtml
from flannelish.lab.analysis import PASS, Analysis, Verdict
from flannelish.lab.nodeapi import DaemonView
from flannelish.lab.report import build_journeys
from flannelish.lab.state import LabSpec, LabState, NodeState, PodState

pytestmark = pytest.mark.unit

RECORDED = Path(__file__).parent / "journeys"


def _state(backend: str = "vxlan") -> LabState:
    state = LabState(
        spec=LabSpec(backend=backend),
        dir="/run/flannelish-lab/lab",
        phase="up",
        underlay_netns="fl-lab-ul",
        etcd_endpoint="http://198.18.0.254:2379",
    )
    for i in (1, 2, 3):
        state.nodes.append(
            NodeState(
                name=f"node{i}",
                netns=f"fl-lab-node{i}",
                ip=f"198.18.0.{i}",
                dir=f"/run/flannelish-lab/lab/node{i}",
                subnet_file=f"/run/flannelish-lab/lab/node{i}/subnet.env",
                netconf="",
                subnet=f"10.244.{i}.0/24",
                mtu=1450,
                vtep_mac=f"02:00:00:00:00:0{i}",
                healthz_port=10253,
            )
        )
        state.pods.append(
            PodState(f"node{i}-pod1", f"node{i}", f"fl-lab-node{i}-pod1", "c", ip=f"10.244.{i}.2")
        )
    return state


def _ready(node: str, subnet: str, skipped: dict[str, str] | None = None) -> DaemonView:
    return DaemonView(
        node,
        {
            "version": 1,
            "ready": True,
            "checks": [],
            "lease": {"subnet": subnet, "public_ip": f"198.18.0.{node[-1]}"},
            "peers": {"skipped": skipped or {}},
        },
    )


def test_node_env_gives_node_commands_the_daemons_settings():
    state = _state()
    env = state.node_env("node2")
    assert env["FLANNELD_HEALTHZ_PORT"] == "10253"
    assert env["FLANNELD_SUBNET_FILE"] == "/run/flannelish-lab/lab/node2/subnet.env"
    assert env["FLANNELD_ETCD_ENDPOINTS"] == "http://198.18.0.254:2379"
    assert env["FLANNELD_PUBLIC_IP"] == "198.18.0.2" and env["FLANNELD_IFACE"] == "eth0"
    assert state.node_env("node2-pod1") == {"FLANNELD_ETCD_ENDPOINTS": "http://198.18.0.254:2379"}


def test_healthy_lab_one_link_per_pair_labelled_with_the_backend():
    state = _state()
    views = {n.name: _ready(n.name, n.subnet) for n in state.nodes}
    topo = diagram.build_topology(state, views)
    assert [(p.a, p.b) for p in topo.peers] == [
        ("node1", "node2"),
        ("node1", "node3"),
        ("node2", "node3"),
    ]
    assert {p.status for p in topo.peers} == {"ok"}
    assert {p.label for p in topo.peers} == {"VXLAN VNI 1 udp/8472"}
    source = diagram.render(topo, "dot").decode()
    for needle in (
        "02:00:00:00:00:01",
        "10.244.2.0/24",
        "198.18.0.3",
        "node3-pod1",
        'id="peer-node1-node2"',
        'id="node-node1"',
        'id="pod-node2-pod1"',
    ):
        assert needle in source


def test_host_gw_links_name_each_nodes_route():
    state = _state("host-gw")
    topo = diagram.build_topology(state, {n.name: _ready(n.name, n.subnet) for n in state.nodes})
    assert topo.peers[0].label == (
        "host-gw routes\nnode1: 10.244.2.0/24 via 198.18.0.2\nnode2: 10.244.1.0/24 via 198.18.0.1"
    )


def test_wireguard_links_name_each_familys_port_and_ends():
    state = _state("wireguard")
    views = {n.name: _ready(n.name, n.subnet) for n in state.nodes}
    topo = diagram.build_topology(state, views)
    assert topo.peers[0].label == "WireGuard udp/51820\n198.18.0.1 ↔ 198.18.0.2"
    state.spec.ip_family = "dual"  # Mode separate: flannel-wg-v6 over the IPv6 underlay
    for i, node in enumerate(state.nodes, start=1):
        node.ip6, node.subnet6 = f"fd18::{i}", f"fd44:0:0:{i}::/64"
    topo = diagram.build_topology(state, views)
    assert topo.backend_label == "WireGuard udp/51820 (IPv4), udp/51821 (IPv6)"
    assert topo.peers[0].label == (
        "WireGuard\nudp/51820 198.18.0.1 ↔ 198.18.0.2\nudp/51821 fd18::1 ↔ fd18::2"
    )
    source = diagram.render(topo, "dot").decode()
    assert "flannel-wg udp/51820" in source and "flannel-wg-v6 udp/51821" in source
    state.spec.ip_family = "ipv6"
    for node in state.nodes:
        node.ip, node.subnet = node.ip6, node.subnet6
    topo = diagram.build_topology(state, views)
    assert topo.peers[0].label == "WireGuard udp/51821\nfd18::1 ↔ fd18::2"


def test_skipped_peer_and_down_daemon_are_drawn_as_such():
    state = _state()
    views = {
        "node1": _ready("node1", "10.244.1.0/24", {"10.244.2.0/24": "duplicate VTEP MAC"}),
        "node2": _ready("node2", "10.244.2.0/24"),
        "node3": DaemonView("node3", error="connection refused"),
    }
    topo = diagram.build_topology(state, views)
    links = {(p.a, p.b): p for p in topo.peers}
    assert links["node1", "node2"].status == "skipped"
    assert "node1 skips node2: duplicate VTEP MAC" in links["node1", "node2"].detail
    assert links["node1", "node3"].status == links["node2", "node3"].status == "unhealthy"
    assert topo.nodes[2].health == "down"
    source = diagram.render(topo, "dot").decode()
    assert "SKIPPED: node1 skips node2" in source and "daemon DOWN" in source
    assert source.count("dashed") == 3


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_svg_has_findable_elements():
    state = _state()
    topo = diagram.build_topology(state, {n.name: _ready(n.name, n.subnet) for n in state.nodes})
    svg = diagram.inline_svg(topo)
    assert svg.startswith("<svg")
    ids = {e.get("id"): e.get("class") for e in ElementTree.fromstring(svg).iter()}
    for ident in ("topology", "underlay", "node-node1", "pod-node3-pod1", "peer-node2-node3"):
        assert ident in ids
    assert ids["peer-node1-node2"] == "edge peer peer-ok"


def test_report_page_is_self_contained_with_a_lane_per_hop():
    journeys = build_journeys(RECORDED / "vxlan", 8472)
    analysis = Analysis([Verdict("VNI 1 on every VXLAN packet", PASS, "136 packets")], 140)
    page = reporthtml.render(
        _state(), SimpleNamespace(analysis=analysis), journeys, '<svg id="topology"></svg>', None
    )
    assert 'id="assertions"' in page and "VNI 1 on every VXLAN packet" in page
    assert '<svg id="topology">' in page
    # nothing is loaded from anywhere: no scripts, stylesheets, images, fonts or frames
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", page)
    assert "url(" not in page and "@import" not in page
    assert all(
        h.startswith("pcaps/") or h.startswith("#") for h in re.findall(r'href="([^"]+)"', page)
    )
    for j in journeys:
        assert f'data-flow="{j.flow.id}"' in page
        for hop in j.flow.hops:
            assert f'id="lane-{j.flow.id}-{hop.key}"' in page
    assert page.count('class="lane ') == sum(len(j.stations) for j in journeys)
    assert "unchanged at all 9 hops (no NAT)" in page
