"""The verifier's IPv6 verdicts over crafted captures: a clean IPv6-over-IPv6 VXLAN
overlay passes; IPv6 pod packets over an IPv4 outer, fragments, oversize inner
packets and unencapsulated IPv6 pod packets fail, each naming its assertion."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from flannelish.lab.analysis import FAIL, PASS, Expected, Flow, analyze, analyze_by_family, decode
from flannelish.lab.state import LabSpec

pytestmark = pytest.mark.unit

N1, N2 = IPv6Address("fd18::1"), IPv6Address("fd18::2")
A, B = IPv6Address("fd44:0:0:1::2"), IPv6Address("fd44:0:0:2::2")
MTU6 = 1430
# Fixed MACs: a bare Ether() makes scapy look the MAC up (ARP/ND on the host, seconds each).
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def expected() -> Expected:
    return Expected(
        backend="vxlan",
        pod_network=IPv6Network("fd44::/48"),
        vni=1,
        port=8472,
        overlay_mtu=MTU6,
        underlay_mtu=1500,
        node_subnets={N1: IPv6Network("fd44:0:0:1::/64"), N2: IPv6Network("fd44:0:0:2::/64")},
        pod_ips=frozenset({A, B}),
        cross_node=frozenset({Flow(A, B, "icmp"), Flow(B, A, "icmp")}),
        same_node=frozenset(),
    )


def inner(src, dst, size=0):
    return Ether(**MACS) / IPv6(src=str(src), dst=str(dst)) / ICMPv6EchoRequest() / Raw(b"x" * size)


def vx(outer_src, outer_dst, packet, outer=IPv6):
    return (
        Ether(**MACS)
        / outer(src=str(outer_src), dst=str(outer_dst))
        / UDP(sport=51000, dport=8472)
        / VXLAN(flags=0x08, vni=1, NextProtocol=0)
        / packet
    )


def clean():
    return [vx(N1, N2, inner(A, B)), vx(N2, N1, inner(B, A)),
            vx(N1, N2, inner(A, B, size=MTU6 - 48))]  # fmt: skip


def failures(frames) -> list[str]:
    return [v.name for v in analyze(frames, expected()).verdicts if v.status == FAIL]


def test_a_clean_ipv6_vxlan_capture_passes_and_names_the_outer_family():
    result = analyze(clean(), expected())
    assert result.ok, [(v.name, v.detail) for v in result.failed]
    table = {v.name: v for v in result.verdicts}
    assert "over IPv6" in table["VXLAN on UDP port 8472"].detail
    assert table["outer src/dst are the nodes' public IPs"].detail.endswith("fd18::1, fd18::2")
    mtu = table[f"inner packets fit the overlay MTU ({MTU6})"]
    assert f"largest inner packet {MTU6} B" in mtu.detail
    assert all(v.status == PASS for v in result.verdicts if "same-node" not in v.name)


def test_ipv6_pod_packets_over_an_ipv4_outer_fail_the_family_and_outer_checks():
    wrong = vx("198.18.0.1", "198.18.0.2", inner(A, B), outer=IP)
    failed = failures([*clean(), wrong])
    assert "VXLAN on UDP port 8472" in failed
    assert "outer src/dst are the nodes' public IPs" in failed


def test_an_inner_packet_over_the_family_mtu_fails():
    assert failures([*clean(), vx(N1, N2, inner(A, B, size=MTU6 - 47))]) == [
        f"inner packets fit the overlay MTU ({MTU6})"
    ]


def test_unencapsulated_and_fragmented_ipv6_pod_packets_fail():
    plain = Ether(**MACS) / IPv6(src=str(A), dst=str(B)) / ICMPv6EchoRequest()
    assert failures([*clean(), plain]) == [
        "no pod-network packet crosses the underlay unencapsulated"
    ]
    frag = Ether(**MACS) / IPv6(src=str(N1), dst=str(N2)) / IPv6ExtHdrFragment(m=1) / Raw(b"y" * 64)
    assert failures([*clean(), frag]) == ["nothing is fragmented (outer or inner)"]


def test_decode_reads_ipv6_outer_and_inner_and_ignores_ipv4_pods_for_the_ipv6_family():
    seen = decode(bytes(vx(N1, N2, inner(A, B, size=10))))
    assert seen is not None and seen.encapsulated
    assert (seen.outer_src, seen.inner_dst, seen.proto, seen.vni) == (N1, B, "icmp", 1)
    assert seen.inner_len == 40 + 8 + 10
    ipv4_pods = vx("198.18.0.1", "198.18.0.2",
                   Ether(**MACS) / IP(src="10.244.1.2", dst="10.244.2.2"), outer=IP)  # fmt: skip
    result = analyze([*clean(), ipv4_pods], expected())
    assert result.ok and result.counts["underlay"] == 1


def expected4() -> Expected:
    a, b = IPv4Address("10.244.1.2"), IPv4Address("10.244.2.2")
    n1, n2 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
    return Expected(
        backend="vxlan",
        pod_network=IPv4Network("10.244.0.0/16"),
        vni=1,
        port=8472,
        overlay_mtu=1450,
        underlay_mtu=1500,
        node_subnets={n1: IPv4Network("10.244.1.0/24"), n2: IPv4Network("10.244.2.0/24")},
        pod_ips=frozenset({a, b}),
        cross_node=frozenset({Flow(a, b, "icmp"), Flow(b, a, "icmp")}),
        same_node=frozenset(),
    )


def vx4(outer_src, outer_dst, src, dst, outer=IP):
    """IPv4 pods' ICMP inside VXLAN over `outer` (IPv4 unless told)."""
    return (
        Ether(**MACS)
        / outer(src=str(outer_src), dst=str(outer_dst))
        / UDP(sport=51000, dport=8472)
        / VXLAN(flags=0x08, vni=1, NextProtocol=0)
        / Ether(**MACS)
        / IP(src=src, dst=dst)
        / ICMP()
    )


def dual_capture():
    return [*clean(), vx4("198.18.0.1", "198.18.0.2", "10.244.1.2", "10.244.2.2"),
            vx4("198.18.0.2", "198.18.0.1", "10.244.2.2", "10.244.1.2")]  # fmt: skip


def test_analyze_by_family_names_each_family_and_ipv4_alone_is_analyze():
    frames = dual_capture()
    dual = analyze_by_family(frames, [expected4(), expected()])
    assert dual.ok, [(v.name, v.detail) for v in dual.failed]
    names = [v.name for v in dual.verdicts]
    assert "IPv4: VXLAN on UDP port 8472" in names and "IPv6: VXLAN on UDP port 8472" in names
    assert len(names) == 2 * len(analyze(frames, expected()).verdicts)
    assert (dual.frames, dual.counts["vxlan"], dual.counts["underlay"]) == (5, 5, 0)
    alone = analyze_by_family(frames, [expected4()])
    assert [v.name for v in alone.verdicts] == [
        v.name for v in analyze(frames, expected4()).verdicts
    ]
    only6 = analyze_by_family(clean(), [expected()])
    assert only6.ok and all(v.name.startswith("IPv6: ") for v in only6.verdicts)


def test_analyze_by_family_fails_a_family_whose_pods_cross_over_the_other_outer_family():
    wrong = vx4(N1, N2, "10.244.1.2", "10.244.2.2", outer=IPv6)  # IPv4 pods over IPv6
    failed = [v.name for v in analyze_by_family([*dual_capture(), wrong],
                                                [expected4(), expected()]).failed]  # fmt: skip
    assert "IPv4: VXLAN on UDP port 8472" in failed
    assert not [name for name in failed if name.startswith("IPv6: ")]


@pytest.mark.parametrize(
    ("family", "want"),
    [
        ("ipv4", {"Network": "10.244.0.0/16", "SubnetLen": 24}),
        ("dual", {"Network": "10.244.0.0/16", "SubnetLen": 24, "EnableIPv6": True,
                  "IPv6Network": "fd44::/48",
                  "IPv6SubnetLen": 64}),
        ("ipv6", {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd44::/48",
                  "IPv6SubnetLen": 64}),
    ],
)  # fmt: skip
def test_the_lab_network_config_per_ip_family(family, want):
    conf = LabSpec(ip_family=family).validate().network_config()
    assert {k: v for k, v in conf.items() if k != "Backend"} == want
    if family == "ipv4":
        assert "EnableIPv6" not in conf and "EnableIPv4" not in conf
