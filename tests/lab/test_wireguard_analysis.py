"""verify's WireGuard assertions on crafted frames (no root), and the doctor's WireGuard check."""

from __future__ import annotations

import os
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import Ether

from flannelish.lab.analysis import FAIL, ICMP_PATTERN, PASS, SKIP, Expected, Flow, analyze
from flannelish.lab.verify import endpoint_host
from flannelish.node.checks import Severity
from flannelish.node.facts import NodeFacts, WireguardFacts
from flannelish.node.wireguard_checks import check_wireguard

pytestmark = pytest.mark.unit

# Fixed MACs: a bare Ether() makes scapy look the MAC up (ARP/ND on the host, seconds each).
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
N1, N2 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
P1, P2 = IPv4Address("10.244.1.2"), IPv4Address("10.244.2.2")


def expected() -> Expected:
    return Expected(
        backend="wireguard",
        pod_network=IPv4Network("10.244.0.0/16"),
        vni=1,
        port=51820,
        overlay_mtu=1420,
        underlay_mtu=1500,
        node_subnets={N1: IPv4Network("10.244.1.0/24"), N2: IPv4Network("10.244.2.0/24")},
        pod_ips=frozenset({P1, P2}),
        cross_node=frozenset({Flow(P1, P2, "icmp"), Flow(P2, P1, "icmp")}),
        same_node=frozenset(),
    )


def wg(src, dst, body: bytes, sport=51820, dport=51820) -> bytes:
    return bytes(
        Ether(**MACS) / IP(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / body
    )


def data(n: int = 96) -> bytes:
    return b"\x04\0\0\0" + os.urandom(12) + os.urandom(n)


def verdicts(frames):
    return {v.name: v for v in analyze(frames, expected()).verdicts}


def test_encrypted_traffic_between_nodes_passes():
    v = verdicts([wg(N1, N2, data()), wg(N2, N1, data()), wg(N1, N2, b"\x01\0\0\0" + bytes(144))])
    assert all(x.status in (PASS, SKIP) for x in v.values()), v


def test_plaintext_pod_packet_fails():
    plain = bytes(Ether(**MACS) / IP(src=str(P1), dst=str(P2)) / ICMP())
    v = verdicts([wg(N1, N2, data()), wg(N2, N1, data()), plain])
    assert v["pod traffic crosses only as WireGuard udp/51820 between node IPs"].status == FAIL


def test_readable_inner_address_or_payload_fails():
    leak = data(0) + bytes(IP(src=str(P1), dst=str(P2)) / ICMP())
    v = verdicts([wg(N1, N2, leak), wg(N2, N1, data())])
    assert v["no inner pod address or payload is readable in any underlay frame"].status == FAIL
    probe = data(0) + b"x" * 64
    v = verdicts([wg(N1, N2, probe), wg(N2, N1, data())])
    assert v["no inner pod address or payload is readable in any underlay frame"].status == FAIL


def test_other_port_and_missing_direction_fail():
    v = verdicts([wg(N1, N2, data(), sport=4000, dport=4000)])
    assert v["pod traffic crosses only as WireGuard udp/51820 between node IPs"].status == FAIL
    v = verdicts([wg(N1, N2, data())])
    assert v["every cross-node pod pair's nodes exchanged WireGuard data both ways"].status == FAIL


# -- IPv6 (flannel-wg-v6: IPv6 pods over the IPv6 underlay to ListenPortV6) -------------

M1, M2 = IPv6Address("fd18::1"), IPv6Address("fd18::2")
Q1, Q2 = IPv6Address("fd44:0:0:1::2"), IPv6Address("fd44:0:0:2::2")
ONLY6 = "pod traffic crosses only as WireGuard udp/51821 between node IPs"


def expected6() -> Expected:
    return replace(
        expected(),
        pod_network=IPv6Network("fd44::/48"),
        port=51821,
        node_subnets={M1: IPv6Network("fd44:0:0:1::/64"), M2: IPv6Network("fd44:0:0:2::/64")},
        pod_ips=frozenset({Q1, Q2}),
        cross_node=frozenset({Flow(Q1, Q2, "icmp"), Flow(Q2, Q1, "icmp")}),
    )


def wg6(src, dst, body: bytes, port=51821, outer=IPv6) -> bytes:
    return bytes(
        Ether(**MACS) / outer(src=str(src), dst=str(dst)) / UDP(sport=port, dport=port) / body
    )


def verdicts6(frames):
    return {v.name: v for v in analyze(frames, expected6()).verdicts}


def test_ipv6_encrypted_traffic_between_nodes_passes_beside_neighbour_discovery():
    # The IPv6 underlay's own neighbour solicitations between the nodes are not pod traffic.
    ns = bytes(Ether(**MACS) / IPv6(src=str(M1), dst=str(M2)) / ICMPv6ND_NS(tgt=str(M2)))
    na = bytes(Ether(**MACS) / IPv6(src=str(M2), dst=str(M1)) / ICMPv6ND_NA(tgt=str(M2)))
    v4 = wg(N1, N2, data())  # the IPv4 device's traffic is not this family's
    result = analyze([wg6(M1, M2, data()), wg6(M2, M1, data()), ns, na, v4], expected6())
    assert result.ok, result.verdicts
    assert "2 WireGuard packets over IPv6" in {v.name: v for v in result.verdicts}[ONLY6].detail
    assert result.counts["wireguard"] == 2


def test_ipv6_plaintext_pod_packet_and_readable_address_fail():
    plain = bytes(Ether(**MACS) / IPv6(src=str(Q1), dst=str(Q2)) / ICMPv6EchoRequest())
    v = verdicts6([wg6(M1, M2, data()), wg6(M2, M1, data()), plain])
    assert v[ONLY6].status == FAIL and f"icmp {Q1}->{Q2}" in v[ONLY6].detail
    leak = data(0) + bytes(IPv6(src=str(Q1), dst=str(Q2)) / ICMPv6EchoRequest())
    v = verdicts6([wg6(M1, M2, leak), wg6(M2, M1, data())])
    assert v["no inner pod address or payload is readable in any underlay frame"].status == FAIL


def test_a_readable_ipv6_ping_is_the_ipv6_familys_finding_not_ipv4s():
    """Dual stack: one capture, one analysis per family; the ping payload is the same in
    both families, so a plaintext IPv6 ping fails IPv6's assertions only."""
    plain6 = bytes(
        Ether(**MACS) / IPv6(src=str(Q1), dst=str(Q2)) / ICMPv6EchoRequest(data=ICMP_PATTERN)
    )
    frames = [wg(N1, N2, data()), wg(N2, N1, data()), plain6]
    assert analyze(frames, expected()).ok
    v = verdicts6([*frames, wg6(M1, M2, data()), wg6(M2, M1, data())])
    assert v["no inner pod address or payload is readable in any underlay frame"].failed


def test_ipv6_pods_on_the_ipv4_devices_port_or_over_ipv4_fail():
    # flannel-wg's port between the IPv6 addresses: not WireGuard of this family
    v = verdicts6([wg6(M1, M2, data(), port=51820), wg6(M2, M1, data(), port=51820)])
    assert v[ONLY6].status == FAIL and "udp 51820->51820" in v[ONLY6].detail
    assert v["every cross-node pod pair's nodes exchanged WireGuard data both ways"].failed
    # IPv6 pods' WireGuard over the IPv4 underlay (one device for both, not Mode separate)
    v = verdicts6([wg6(N1, N2, data(), outer=IP), wg6(N2, N1, data(), outer=IP)])
    assert v[ONLY6].status == FAIL and "not between the nodes' IPv6 addresses" in v[ONLY6].detail
    assert v["every cross-node pod pair's nodes exchanged WireGuard data both ways"].failed


def test_endpoint_host_reads_both_forms():
    assert endpoint_host("198.18.0.2:51820") == "198.18.0.2"
    assert endpoint_host("[fd18::2]:51821") == "fd18::2"
    assert endpoint_host("") == ""


def facts(**kw) -> NodeFacts:
    f = NodeFacts("/run/flannel/subnet.env", now=1000.0)
    base = dict(
        implementation="userspace",
        kernel_module=False,
        wireguard_go_pid=42,
        key_file="/run/flannel/wgkey",
        key_file_mode=0o600,
        peers=[{"allowed_ips": "10.244.2.0/24", "endpoint": "198.18.0.2:51820",
                "last_handshake": 990.0, "rx_bytes": 1, "tx_bytes": 1}],
    )  # fmt: skip
    base.update(kw)
    f.wireguard = WireguardFacts(**base)
    return f


def test_doctor_explains_userspace_and_flags_key_and_handshakes():
    out = check_wireguard(facts())
    assert [f.severity for f in out] == [Severity.INFO, Severity.INFO]
    assert "no WireGuard module" in out[0].message and "pid 42" in out[0].message
    out = check_wireguard(facts(key_file_mode=0o644))
    assert any(f.severity is Severity.ERROR and "644" in f.message for f in out)
    out = check_wireguard(facts(key_file_mode=None))
    assert any(f.severity is Severity.ERROR and "missing" in f.message for f in out)
    stale = [{**facts().wireguard.peers[0], "last_handshake": 0.0}]
    out = check_wireguard(facts(peers=stale))
    assert any(f.severity is Severity.WARNING and "no handshake" in f.message for f in out)
    assert check_wireguard(NodeFacts("/x")) == []
