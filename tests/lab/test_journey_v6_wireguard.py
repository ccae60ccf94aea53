"""The packet-journey builder on recorded per-hop captures of a dual-stack VXLAN lab (each
family over its own device and outer IP) and a WireGuard lab (the encrypted underlay hops),
made by tests/lab/record_journeys.py from `verify --report`; and on crafted frames for what
a healthy WireGuard lab never shows (a readable pod packet on the wire)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from flannelish.lab import journey as jr
from flannelish.lab.headers import Layer
from flannelish.lab.hops import pcap_link, read_pcap
from flannelish.lab.report import build_journeys

# Fixed MACs: a bare Ether() makes scapy look the MAC up (ARP/ND on the host, seconds each).
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}

pytestmark = pytest.mark.unit

RECORDED = Path(__file__).parent / "journeys"
UNDERLAY = ("node1-eth0", "underlay-br0", "node2-eth0")


@pytest.fixture(scope="module")
def dual() -> dict[str, jr.Journey]:
    return {j.flow.id: j for j in build_journeys(RECORDED / "vxlan-dual", 8472)}


@pytest.fixture(scope="module")
def wg() -> dict[str, jr.Journey]:
    return {j.flow.id: j for j in build_journeys(RECORDED / "wireguard", 51820)}


def _by_key(j: jr.Journey) -> dict[str, jr.Station]:
    return {s.hop.key: s for s in j.stations}


def _layer(st: jr.Station, name: str) -> Layer:
    return next(layer for layer in st.layers if layer.name == name)


def _names(st: jr.Station) -> list[str]:
    return [layer.name for layer in st.layers]


def test_dual_stack_has_the_four_journeys_of_each_family(dual):
    assert sorted(dual) == sorted(
        f"{proto}{tag}-{where}"
        for tag in ("", "6")
        for proto, where in (
            ("icmp", "cross"),
            ("tcp", "cross"),
            ("udp", "cross"),
            ("icmp", "same"),
        )
    )
    for j in dual.values():
        assert j.ok, (j.flow.id, [f.text for f in j.findings if not f.ok])
        assert j.flow.family == (6 if "6-" in j.flow.id else 4)


def test_each_family_crosses_its_own_vxlan_device_inside_its_own_outer_ip(dual):
    for flow_id, device, outer, ends, pod in (
        ("icmp-cross", "flannel.1", "IPv4 (outer)", ("198.18.0.1", "198.18.0.2"), "IPv4 (pod)"),
        ("icmp6-cross", "flannel-v6.1", "IPv6 (outer)", ("fd18::1", "fd18::2"), "IPv6 (pod)"),
    ):
        j = dual[flow_id]
        keys = [s.hop.key for s in j.stations]
        assert f"node1-{device}" in keys and f"node2-{device}" in keys, keys
        st = _by_key(j)
        for key in UNDERLAY:
            assert _names(st[key])[:4] == ["Ethernet (outer)", outer, "UDP (outer)", "VXLAN"]
            assert (_layer(st[key], outer).get("src"), _layer(st[key], outer).get("dst")) == ends
            assert _layer(st[key], "VXLAN").get("vni") == "1"
            inner = _layer(st[key], pod)
            assert (inner.get("src"), inner.get("dst")) == (j.flow.src, j.flow.dst)
        assert f"outer {ends[0]} → {ends[1]}, udp/8472, VNI 1" in j.finding("encap").text


def test_ipv6_hop_limit_drops_once_per_routing_node_and_the_ping_fills_the_v6_mtu(dual):
    j = dual["icmp6-cross"]
    st = _by_key(j)
    assert _names(st["node1-pod1-eth0"]) == ["Ethernet", "IPv6 (pod)", "ICMPv6"]
    hlim = next(
        f for f in _layer(st["node1-flannel-v6.1"], "IPv6 (pod)").fields if f.name == "hlim"
    )
    assert (hlim.changed, hlim.before, hlim.value) == (True, "64", "63")
    assert st["node2-pod1-eth0"].packet.ttl == 62
    assert "hop limit 64" in j.finding("ttl").text and "routed 2 time(s)" in j.finding("ttl").text
    # IPv6 VXLAN costs 70 bytes: the MTU-sized IPv6 ping fills the 1500 B underlay exactly
    mtu = st["node1-flannel-v6.1"].hop.mtu
    assert st["node1-pod1-eth0"].packet.length == mtu == 1430
    assert st["underlay-br0"].packet.outer_length == 1500


def test_ipv6_same_node_ping_stays_on_the_bridge(dual):
    seen = {s.hop.key: s.seen for s in dual["icmp6-same"].stations}
    assert seen == {
        "node1-pod1-eth0": True,
        "node1-cni0": True,
        "node1-flannel-v6.1": False,
        "node1-eth0": False,
        "node1-pod2-eth0": True,
    }


def test_wireguard_hops_and_the_tunnel_device_without_a_link_header(wg):
    assert sorted(wg) == ["icmp-cross", "icmp-same", "tcp-cross", "udp-cross"]
    for j in wg.values():
        assert j.ok, (j.flow.id, [f.text for f in j.findings if not f.ok])
    assert pcap_link(RECORDED / "wireguard" / "node1-flannel-wg.pcap") == "raw"
    st = _by_key(wg["icmp-cross"])
    assert [s.hop.role for s in wg["icmp-cross"].stations][2] == jr.TUNNEL_SRC
    assert _names(st["node1-flannel-wg"])[:2] == ["IPv4 (pod)", "ICMP"]
    assert "Ethernet" in st["node1-flannel-wg"].removed


def test_wireguard_payload_is_encrypted_on_the_wire(wg):
    for proto in ("icmp", "tcp", "udp"):
        j = wg[f"{proto}-cross"]
        st = _by_key(j)
        sealed = [st[key] for key in UNDERLAY]
        for s in sealed:
            assert s.packet.encrypted
            assert _names(s) == [
                "Ethernet (outer)",
                "IPv4 (outer)",
                "UDP (outer)",
                "WireGuard",
                "encrypted pod packet",
            ]
            outer = _layer(s, "IPv4 (outer)")
            assert (outer.get("src"), outer.get("dst")) == ("198.18.0.1", "198.18.0.2")
            assert _layer(s, "UDP (outer)").get("dport") == "51820"
            assert _layer(s, "WireGuard").get("type") == "4 (data)"
            assert _layer(s, "encrypted pod packet").get("inner headers") == "not readable"
            assert not any(name.endswith("(pod)") for name in _names(s))
        # one and the same message on both sides and on the wire
        assert len({s.packet.ident for s in sealed}) == 1
        # its sealed length is the pod packet's, padded to 16 bytes (not past the MTU)
        plain = st["node1-flannel-wg"].packet
        assert sealed[0].packet.length in (plain.length, -(-plain.length // 16) * 16)
        assert sealed[0].packet.ts >= plain.ts
        # wrapped at node1 eth0, unwrapped before node2's tunnel device; pod layers return
        assert all(layer.added for layer in sealed[0].layers)
        assert any("encrypted here" in n for n in sealed[0].notes)
        back = st["node2-flannel-wg"]
        assert "WireGuard" in back.removed and not any(layer.added for layer in back.layers)
        encap = j.finding("encap").text
        assert encap.startswith("encrypted by WireGuard at node1 eth0 (underlay)")
        assert "decrypted before node2 flannel-wg" in encap
        assert j.finding("sealed").ok
        assert "readable (encrypted at the other 3) (no NAT)" in j.finding("nat").text


def test_the_recorded_wire_holds_other_wireguard_traffic_the_builder_passes_over(wg):
    frames = list(read_pcap(RECORDED / "wireguard" / "underlay-br0.pcap"))
    packets = jr.packets_of(frames, "ether", 51820)
    chosen = {_by_key(j)["underlay-br0"].packet.ident for j in wg.values() if not j.flow.same_node}
    others = [p for p in packets if p.encrypted and p.ident not in chosen]
    assert others and any((p.src, p.dst) != ("198.18.0.1", "198.18.0.2") for p in others)


def test_a_readable_pod_packet_on_a_wireguard_wire_is_a_finding(wg):
    """Plaintext on the underlay (a tunnel bypassed): no encrypted hop, and it is said."""
    j = wg["udp-cross"]
    frames = {s.hop.key: [(s.packet.ts, s.packet.raw)] for s in j.stations if s.packet}
    pod = _by_key(j)["node1-cni0"].packet.raw
    for key in UNDERLAY:
        frames[key] = [(frames[key][0][0], pod)]
    rebuilt = jr.build(j.flow, frames, 51820)
    assert not rebuilt.ok
    assert rebuilt.finding("encap").text == "crossed the underlay without WireGuard"


def test_a_pod_address_inside_a_wireguard_message_is_a_finding():
    hops = tuple(
        jr.Hop(k, k, "ns", "eth0", role, mtu=1500)
        for k, role in (("a", jr.POD_SRC), ("w", jr.WIRE), ("b", jr.POD_DST))
    )
    flow = jr.FlowSpec("icmp6-cross", "t", "icmp", "fd44:0:0:1::2", "fd44:0:0:2::2", "a", "b",
                       False, "wireguard", hops=hops, family=6, src_node_ip="fd18::1",
                       dst_node_ip="fd18::2")  # fmt: skip
    ping = IPv6(src=flow.src, dst=flow.dst) / ICMPv6EchoRequest(id=1, seq=1, data=b"x" * 40)
    leak = b"\x04\0\0\0" + (7).to_bytes(4, "little") + (1).to_bytes(8, "little") + bytes(ping)
    leak += b"\0" * (-len(leak) % 16 + 16)
    wire = Ether(**MACS) / IPv6(src="fd18::1", dst="fd18::2") / UDP(sport=51820, dport=51820) / leak
    frames = {
        "a": [(1, bytes(Ether(**MACS) / ping))],
        "w": [(2, bytes(wire))],
        "b": [(3, bytes(Ether(**MACS) / ping))],
    }
    j = jr.build(replace(flow), frames, 51820)
    st = _by_key(j)
    assert st["w"].packet.encrypted and st["w"].packet.family == 6
    assert _names(st["w"])[1] == "IPv6 (outer)"
    sealed = j.finding("sealed")
    assert sealed is not None and not sealed.ok and "readable at w" in sealed.text


def test_hops_json_of_the_wireguard_lab_names_the_tun_device_raw():
    facts = json.loads((RECORDED / "wireguard" / "hops.json").read_text())
    assert facts["node1-flannel-wg"]["link"] == "raw" and facts["node1-eth0"]["link"] == "ether"


def test_an_ipv4_packet_on_a_raw_hop_is_decoded_without_ethernet():
    raw = bytes(IP(src="10.244.1.2", dst="10.244.2.2") / UDP(sport=1, dport=7777) / b"hi")
    p = jr.pod_packet(5, 1, raw, "raw")
    assert p is not None and (p.src, p.dst, p.proto, p.length) == (
        "10.244.1.2",
        "10.244.2.2",
        "udp",
        30,
    )


def test_an_ipv6_flow_follows_its_own_wireguard_port_and_decodes_it_as_wireguard():
    """flannel-wg-v6 listens on 51821: the flow names its port, and the message there is
    WireGuard (scapy binds VXLAN to any port it is given first, and would win)."""
    hops = (
        jr.Hop("a", "a", "ns", "eth0", jr.POD_SRC, mtu=1500),
        jr.Hop("t", "t", "ns", "flannel-wg-v6", jr.TUNNEL_SRC, mtu=1420, link="raw"),
        jr.Hop("w", "w", "ns", "br0", jr.WIRE, mtu=1500),
        jr.Hop("b", "b", "ns", "eth0", jr.POD_DST, mtu=1500),
    )
    flow = jr.FlowSpec("icmp6-cross", "t", "icmp", "fd44:0:0:1::2", "fd44:0:0:2::2", "a", "b",
                       False, "wireguard", hops=hops, family=6, src_node_ip="fd18::1",
                       dst_node_ip="fd18::2", tunnel_port=51821)  # fmt: skip
    ping = IPv6(src=flow.src, dst=flow.dst) / ICMPv6EchoRequest(id=1, seq=1, data=b"\x10" * 40)
    sealed = b"\x04\0\0\0" + (7).to_bytes(4, "little") + (3).to_bytes(8, "little")
    sealed += bytes(-(-len(ping) // 16) * 16 + 16)  # the padded ciphertext and its tag
    wire = (
        Ether(**MACS) / IPv6(src="fd18::1", dst="fd18::2") / UDP(sport=51821, dport=51821) / sealed
    )
    frames = {
        "a": [(1, bytes(Ether(**MACS) / ping))],
        "t": [(2, bytes(ping))],
        "w": [(3, bytes(wire))],
        "b": [(4, bytes(Ether(**MACS) / ping))],
    }
    j = jr.build(flow, frames, 51820)  # the lab's first port; the flow's own wins
    assert j.ok, [f.text for f in j.findings if not f.ok]
    st = _by_key(j)
    assert st["w"].packet.encrypted and st["w"].packet.ident == (7, 3)
    assert _names(st["w"]) == [
        "Ethernet (outer)", "IPv6 (outer)", "UDP (outer)", "WireGuard", "encrypted pod packet",
    ]  # fmt: skip
    assert "outer fd18::1 → fd18::2, udp/51821" in j.finding("encap").text
    assert jr.FlowSpec.from_dict(flow.to_dict()).tunnel_port == 51821
