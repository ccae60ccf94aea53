"""The packet-journey builder on real per-hop captures of a vxlan and a host-gw lab
(tests/lab/journeys/, made by tests/lab/record_journeys.py from `verify --report`),
and on crafted frames for what a healthy lab never shows (NAT, a missing hop)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from flannelish.lab import journey as jr
from flannelish.lab.headers import Layer
from flannelish.lab.hops import parse_hop, read_pcap, write_pcap
from flannelish.lab.report import build_journeys

pytestmark = pytest.mark.unit

RECORDED = Path(__file__).parent / "journeys"
OUTER = ["Ethernet (outer)", "IPv4 (outer)", "UDP (outer)", "VXLAN"]


def _journeys(backend: str) -> dict[str, jr.Journey]:
    return {j.flow.id: j for j in build_journeys(RECORDED / backend, 8472)}


@pytest.fixture(scope="module")
def vxlan() -> dict[str, jr.Journey]:
    return _journeys("vxlan")


@pytest.fixture(scope="module")
def hostgw() -> dict[str, jr.Journey]:
    return _journeys("host-gw")


def _names(st: jr.Station) -> list[str]:
    return [layer.name for layer in st.layers]


def _layer(st: jr.Station, name: str) -> Layer:
    return next(layer for layer in st.layers if layer.name == name)


def _facts(backend: str) -> dict[str, dict]:
    return json.loads((RECORDED / backend / "hops.json").read_text())


def test_one_cross_node_journey_per_protocol_and_one_same_node(vxlan, hostgw):
    assert sorted(vxlan) == sorted(hostgw) == ["icmp-cross", "icmp-same", "tcp-cross", "udp-cross"]
    for journeys in (vxlan, hostgw):
        for j in journeys.values():
            assert j.ok, [f.text for f in j.findings if not f.ok]


def test_vxlan_cross_node_hops_in_path_order(vxlan):
    roles = [s.hop.role for s in vxlan["icmp-cross"].stations]
    assert roles == [
        jr.POD_SRC,
        jr.BRIDGE_SRC,
        jr.TUNNEL_SRC,
        jr.UNDERLAY_SRC,
        jr.WIRE,
        jr.UNDERLAY_DST,
        jr.TUNNEL_DST,
        jr.BRIDGE_DST,
        jr.POD_DST,
    ]
    keys = [s.hop.key for s in vxlan["icmp-cross"].stations]
    assert keys == [
        "node1-pod1-eth0",
        "node1-cni0",
        "node1-flannel.1",
        "node1-eth0",
        "underlay-br0",
        "node2-eth0",
        "node2-flannel.1",
        "node2-cni0",
        "node2-pod1-eth0",
    ]
    for j in (vxlan[p] for p in ("icmp-cross", "tcp-cross", "udp-cross")):
        assert all(s.seen for s in j.stations), j.flow.id


def test_vxlan_header_is_added_on_the_source_underlay_and_removed_at_the_far_tunnel(vxlan):
    for proto in ("icmp", "tcp", "udp"):
        st = {s.hop.key: s for s in vxlan[f"{proto}-cross"].stations}
        # inside the node, before the tunnel, and after it on the far side: the pod frame only
        for key in (
            "node1-pod1-eth0",
            "node1-cni0",
            "node1-flannel.1",
            "node2-flannel.1",
            "node2-cni0",
            "node2-pod1-eth0",
        ):
            assert not any(n in _names(st[key]) for n in OUTER), (proto, key, _names(st[key]))
            assert not st[key].packet.encapsulated
        # on the underlay, on both sides and on the wire: wrapped in VXLAN
        for key in ("node1-eth0", "underlay-br0", "node2-eth0"):
            assert _names(st[key])[:4] == OUTER, (proto, key)
            assert _layer(st[key], "VXLAN").get("vni") == "1"
            assert _layer(st[key], "UDP (outer)").get("dport") == "8472"
            outer = _layer(st[key], "IPv4 (outer)")
            assert (outer.get("src"), outer.get("dst")) == ("198.18.0.1", "198.18.0.2")
        assert all(layer.added for layer in st["node1-eth0"].layers if layer.name in OUTER)
        assert not any(layer.added for layer in st["underlay-br0"].layers)
        assert set(OUTER) <= set(st["node2-flannel.1"].removed)


def test_the_inner_frame_is_addressed_vtep_to_vtep(vxlan):
    facts = _facts("vxlan")
    st = {s.hop.key: s for s in vxlan["icmp-cross"].stations}
    ether = _layer(st["node1-flannel.1"], "Ethernet")
    assert (ether.get("src"), ether.get("dst")) == (
        facts["node1-flannel.1"]["mac"],
        facts["node2-flannel.1"]["mac"],
    )
    # routing on node1 rewrote the pod frame's MACs: changed fields are marked
    assert {f.name for f in ether.fields if f.changed} == {"src", "dst"}
    assert _layer(st["underlay-br0"], "Ethernet").get("dst") == facts["node2-flannel.1"]["mac"]


def test_ttl_drops_once_per_routing_node(vxlan, hostgw):
    for journeys, tunnel in ((vxlan, "node1-flannel.1"), (hostgw, "node1-eth0")):
        st = {s.hop.key: s for s in journeys["icmp-cross"].stations}
        assert st["node1-pod1-eth0"].packet.ttl == 64
        assert st["node1-cni0"].packet.ttl == 64
        assert st[tunnel].packet.ttl == 63
        ttl = next(f for f in _layer(st[tunnel], "IPv4 (pod)").fields if f.name == "ttl")
        assert (ttl.changed, ttl.before, ttl.value) == (True, "64", "63")
        assert st["node2-cni0"].packet.ttl == 62
        assert st["node2-pod1-eth0"].packet.ttl == 62
        assert "routed 2 time(s)" in journeys["icmp-cross"].finding("ttl").text
    assert "bridged, never routed" in vxlan["icmp-same"].finding("ttl").text


def test_no_nat_pod_addresses_are_the_same_at_every_hop(vxlan, hostgw):
    for journeys in (vxlan, hostgw):
        for j in journeys.values():
            for s in j.stations:
                if s.seen:
                    pod_ip = _layer(s, "IPv4 (pod)")
                    assert (pod_ip.get("src"), pod_ip.get("dst")) == (j.flow.src, j.flow.dst)
            nat = j.finding("nat")
            assert nat is not None and nat.ok and "no NAT" in nat.text


def test_lengths_against_the_mtu(vxlan):
    st = {s.hop.key: s for s in vxlan["icmp-cross"].stations}
    facts = _facts("vxlan")
    mtu = facts["node1-flannel.1"]["mtu"]
    # the MTU-sized ping: the pod packet fills the overlay MTU, VXLAN adds 50 bytes
    assert st["node1-pod1-eth0"].packet.length == mtu == 1450
    assert st["underlay-br0"].packet.length == 1450
    assert st["underlay-br0"].packet.outer_length == 1500 == facts["underlay-br0"]["mtu"]
    assert "inside an outer packet of 1500 B" in vxlan["icmp-cross"].finding("mtu").text


def test_tcp_is_followed_by_sequence_number_through_segmentation(vxlan):
    j = vxlan["tcp-cross"]
    seqs = {_layer(s, "TCP").get("seq") for s in j.stations}
    assert len(seqs) == 1
    wire = next(s for s in j.stations if s.hop.role == jr.WIRE)
    assert wire.packet.length <= 1450
    first = j.stations[0]
    if first.packet.length > first.hop.mtu:  # a GSO super-packet inside the sending node
        assert any("GSO" in n for n in first.notes)


def test_same_node_traffic_never_reaches_tunnel_or_underlay(vxlan, hostgw):
    for journeys in (vxlan, hostgw):
        j = journeys["icmp-same"]
        seen = {s.hop.key: s.seen for s in j.stations}
        assert seen.pop("node1-pod1-eth0") and seen.pop("node1-cni0")
        assert seen.pop("node1-pod2-eth0")
        assert seen and not any(seen.values())  # flannel.1 (vxlan) and eth0
        assert "stays on the node" in j.finding("path").text


def test_host_gw_is_never_encapsulated(hostgw):
    j = hostgw["udp-cross"]
    assert [s.hop.role for s in j.stations] == [
        jr.POD_SRC,
        jr.BRIDGE_SRC,
        jr.UNDERLAY_SRC,
        jr.WIRE,
        jr.UNDERLAY_DST,
        jr.BRIDGE_DST,
        jr.POD_DST,
    ]
    for s in j.stations:
        assert _names(s)[:3] == ["Ethernet", "IPv4 (pod)", "UDP"], _names(s)
    assert "never encapsulated" in j.finding("encap").text


# -- crafted: what a healthy lab never shows ----------------------------------------------------


def _hop(key: str, role: str, seen: bool = True) -> jr.Hop:
    return jr.Hop(key, key, "ns", "eth0", role, mtu=1500, expect_seen=seen)


def _flow(*hops: jr.Hop) -> jr.FlowSpec:
    return jr.FlowSpec(
        "icmp-cross", "t", "icmp", "10.244.1.2", "10.244.2.2", "a", "b", False, "host-gw", hops=hops
    )


def _echo(src: str, dst: str = "10.244.2.2", ttl: int = 64) -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst, ttl=ttl) / ICMP(type=8, id=7, seq=1) / (b"x" * 56))


def test_a_rewritten_source_address_is_reported_as_nat():
    flow = _flow(_hop("a", jr.POD_SRC), _hop("w", jr.WIRE), _hop("b", jr.POD_DST))
    frames = {
        "a": [(1, _echo("10.244.1.2"))],
        "w": [(2, _echo("198.18.0.1", ttl=63))],
        "b": [(3, _echo("198.18.0.1", ttl=62))],
    }
    j = jr.build(flow, frames)
    assert all(s.seen for s in j.stations)
    nat = j.finding("nat")
    assert nat is not None and not nat.ok
    assert "NAT at w: 198.18.0.1 → 10.244.2.2" in nat.text
    src = next(f for f in _layer(j.stations[1], "IPv4 (pod)").fields if f.name == "src")
    assert (src.changed, src.before) == (True, "10.244.1.2")


def test_a_missing_hop_and_a_leak_are_findings():
    flow = _flow(
        _hop("a", jr.POD_SRC),
        _hop("w", jr.WIRE),
        _hop("x", jr.UNDERLAY_SRC, seen=False),
        _hop("b", jr.POD_DST),
    )
    frames = {
        "a": [(1, _echo("10.244.1.2"))],
        "x": [(2, _echo("10.244.1.2"))],
        "b": [(3, _echo("10.244.1.2"))],
    }
    j = jr.build(flow, frames)
    texts = [f.text for f in j.findings if not f.ok]
    assert "not captured at w" in texts
    assert "seen where it must not go: x" in texts
    assert not j.ok


def test_nothing_captured_is_one_finding():
    j = jr.build(_flow(_hop("a", jr.POD_SRC)), {"a": []})
    assert [f.kind for f in j.findings] == ["capture"] and not j.ok


def test_pcap_round_trip_keeps_nanoseconds(tmp_path):
    frames = [
        (1_700_000_000_123_456_789, _echo("10.244.1.2")),
        (1_700_000_001_000_000_001, b"\0" * 60),
    ]
    write_pcap(tmp_path / "x.pcap", frames)
    assert list(read_pcap(tmp_path / "x.pcap")) == frames
    from scapy.utils import RawPcapReader

    with RawPcapReader(str(tmp_path / "x.pcap")) as reader:  # Wireshark-readable: scapy agrees
        assert [bytes(d) for d, _ in reader] == [f for _, f in frames]


def test_hop_argument():
    assert parse_hop("node1-flannel.1=fl-lab-node1:flannel.1") == (
        "node1-flannel.1",
        ("fl-lab-node1", "flannel.1"),
    )
    with pytest.raises(Exception, match="KEY=NETNS:IFACE"):
        parse_hop("nonsense")


def test_vxlan_traffic_that_bypasses_the_tunnel_is_caught():
    hops = (
        _hop("a", jr.POD_SRC),
        _hop("t", jr.TUNNEL_SRC),
        _hop("w", jr.WIRE),
        _hop("b", jr.POD_DST),
    )
    flow = replace(_flow(*hops), backend="vxlan")
    frames = {k: [(i, _echo("10.244.1.2"))] for i, k in enumerate(("a", "w", "b"), start=1)}
    j = jr.build(flow, frames)
    assert [f.text for f in j.findings if not f.ok] == [
        "not captured at t",
        "crossed the underlay without VXLAN",
    ]
