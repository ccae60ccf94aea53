"""The verifier's verdicts over crafted captures: it passes a clean overlay and
fails, naming the assertion, on each way an overlay can be wrong."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from flannelish.lab.analysis import FAIL, PASS, SKIP, Expected, Flow, analyze, decode

pytestmark = pytest.mark.unit

N1, N2, N3 = (IPv4Address(f"198.18.0.{i}") for i in (1, 2, 3))
A, A2, B = IPv4Address("10.244.1.2"), IPv4Address("10.244.1.3"), IPv4Address("10.244.2.2")
L4 = {
    "icmp": ICMP,
    "tcp": lambda: TCP(sport=40000, dport=7777),
    "udp": lambda: UDP(sport=40001, dport=7777),
}


def flows(a, b, *protos):
    return {f for p in protos for f in (Flow(a, b, p), Flow(b, a, p))}


def expected(backend="vxlan", same=True) -> Expected:
    return Expected(
        backend=backend,
        pod_network=IPv4Network("10.244.0.0/16"),
        vni=1,
        port=8472,
        overlay_mtu=1450,
        underlay_mtu=1500,
        node_subnets={N1: IPv4Network("10.244.1.0/24"), N2: IPv4Network("10.244.2.0/24")},
        pod_ips=frozenset({A, A2, B}),
        cross_node=frozenset(flows(A, B, "icmp", "tcp", "udp")),
        same_node=frozenset(flows(A, A2, "icmp") if same else set()),
    )


def inner(src, dst, proto="icmp", size=0, **ip):
    return Ether() / IP(src=str(src), dst=str(dst), **ip) / L4[proto]() / Raw(b"x" * size)


def vx(outer_src, outer_dst, packet, vni=1, dport=8472, **ip):
    # flags=0x08 and no next-protocol: what the Linux vxlan driver sends.
    return (
        Ether()
        / IP(src=str(outer_src), dst=str(outer_dst), **ip)
        / UDP(sport=51000, dport=dport)
        / VXLAN(flags=0x08, vni=vni, NextProtocol=0)
        / packet
    )


def clean_capture():
    frames = [
        Ether() / ARP(psrc="198.18.0.1", pdst="198.18.0.254"),
        Ether() / IP(src="198.18.0.1", dst="198.18.0.254") / TCP(sport=45000, dport=2379),
    ]
    for proto in ("icmp", "tcp", "udp"):
        frames.append(vx(N1, N2, inner(A, B, proto)))
        frames.append(vx(N2, N1, inner(B, A, proto)))
    frames.append(vx(N1, N2, inner(A, B, "icmp", size=1450 - 28)))
    return frames


def verdicts(frames, exp=None):
    result = analyze(frames, exp or expected())
    return {v.name: v for v in result.verdicts}, result


def only_failure(frames, exp=None) -> str:
    table, _result = verdicts(frames, exp)
    failed = [name for name, v in table.items() if v.status == FAIL]
    assert len(failed) == 1, failed
    return failed[0]


def test_a_clean_vxlan_capture_passes_every_assertion():
    table, result = verdicts(clean_capture())
    assert result.ok
    assert all(v.status == PASS for v in table.values()), table
    assert result.counts["vxlan"] == 7 and result.counts["underlay"] == 1
    assert "largest inner packet 1450 B" in table["inner packets fit the overlay MTU (1450)"].detail


def test_analysis_accepts_raw_bytes_as_read_from_a_pcap():
    assert analyze([bytes(f) for f in clean_capture()], expected()).ok


def test_same_node_assertion_is_skipped_when_no_node_has_two_pods():
    table, result = verdicts(clean_capture(), expected(same=False))
    assert result.ok
    assert table["same-node pod traffic never reaches the underlay"].status == SKIP


@pytest.mark.parametrize(
    ("bad_frame", "assertion"),
    [
        (vx(N1, N2, inner(A, B), vni=2), "VNI 1 on every VXLAN packet"),
        (vx(N1, N2, inner(A, B), dport=4789), "VXLAN on UDP port 8472"),
        (vx(N3, N2, inner(A, B)), "outer src/dst are the nodes' public IPs"),
        (vx(N2, N1, inner(A, B)), "outer src/dst are the nodes' public IPs"),
        # SNAT to the node's flannel.1 address: the inner source is no pod any more.
        (vx(N1, N2, inner("10.244.1.0", B)), "inner src/dst are the pod IPs, unchanged (no NAT)"),
        (inner(A, B), "no pod-network packet crosses the underlay unencapsulated"),
        (inner(B, A, "tcp"), "no pod-network packet crosses the underlay unencapsulated"),
        (vx(N1, N2, inner(A, B, size=1500 - 28)), "inner packets fit the overlay MTU (1450)"),
        (vx(N1, N2, inner(A, B, flags="MF")), "nothing is fragmented (outer or inner)"),
    ],
)
def test_each_kind_of_bad_packet_fails_exactly_its_assertion(bad_frame, assertion):
    assert only_failure([*clean_capture(), bad_frame]) == assertion


def test_an_outer_fragment_fails_the_fragment_assertion():
    frag = Ether() / IP(src=str(N1), dst=str(N2), flags="MF", proto=17) / Raw(b"\0" * 64)
    assert only_failure([*clean_capture(), frag]) == "nothing is fragmented (outer or inner)"


def test_same_node_traffic_on_the_underlay_fails_whether_encapsulated_or_not():
    name = "same-node pod traffic never reaches the underlay"
    table, _ = verdicts([*clean_capture(), vx(N1, N1, inner(A, A2))])
    assert table[name].status == FAIL
    table, _ = verdicts([*clean_capture(), inner(A2, A)])
    assert table[name].status == FAIL
    assert "10.244.1.3" in table[name].detail


def test_an_empty_capture_fails_because_no_cross_node_flow_was_seen():
    table, result = verdicts([])
    assert not result.ok
    v = table["every cross-node pod flow crossed inside VXLAN"]
    assert v.status == FAIL and "6 of 6 flows not seen" in v.detail


def test_a_missing_reply_direction_is_named():
    frames = [
        f
        for f in clean_capture()
        if not (
            f.haslayer(VXLAN)
            and f[VXLAN].payload[IP].src == str(B)
            and f[VXLAN].payload.haslayer(UDP)
        )
    ]
    table, _ = verdicts(frames)
    v = table["every cross-node pod flow crossed inside VXLAN"]
    assert v.status == FAIL and "udp 10.244.2.2->10.244.1.2" in v.detail


def test_host_gw_expects_native_routing_and_rejects_vxlan():
    exp = expected("host-gw")
    native = [inner(s, d, p) for p in ("icmp", "tcp", "udp") for s, d in ((A, B), (B, A))]
    _, result = verdicts(native, exp)
    assert result.ok, [v for v in result.verdicts if v.failed]
    _table, result = verdicts([*native, vx(N1, N2, inner(A, B))], exp)
    assert [v.name for v in result.failed] == ["no VXLAN on the underlay"]


@given(
    vni=st.integers(0, 2**24 - 1),
    dport=st.integers(1, 65535),
    size=st.integers(0, 1400),
)
def test_decode_reads_vni_port_and_inner_addresses_of_any_vxlan_frame(vni, dport, size):
    seen = decode(bytes(vx(N1, N2, inner(A, B, "udp", size=size), vni=vni, dport=dport)))
    assert seen is not None and seen.encapsulated
    assert (seen.vni, seen.dport, seen.inner_src, seen.inner_dst) == (vni, dport, A, B)
    assert seen.inner_len == 20 + 8 + size and seen.proto == "udp"
