"""verify's WireGuard assertions on crafted frames (no root), and the doctor's WireGuard check."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from flannelish.lab.analysis import FAIL, PASS, SKIP, Expected, Flow, analyze
from flannelish.node.checks import Severity
from flannelish.node.facts import NodeFacts, WireguardFacts
from flannelish.node.wireguard_checks import check_wireguard

pytestmark = pytest.mark.unit

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
    return bytes(Ether() / IP(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / body)


def data(n: int = 96) -> bytes:
    return b"\x04\0\0\0" + os.urandom(12) + os.urandom(n)


def verdicts(frames):
    return {v.name: v for v in analyze(frames, expected()).verdicts}


def test_encrypted_traffic_between_nodes_passes():
    v = verdicts([wg(N1, N2, data()), wg(N2, N1, data()), wg(N1, N2, b"\x01\0\0\0" + bytes(144))])
    assert all(x.status in (PASS, SKIP) for x in v.values()), v


def test_plaintext_pod_packet_fails():
    plain = bytes(Ether() / IP(src=str(P1), dst=str(P2)) / ICMP())
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
