"""Dual-stack and IPv6-only labs end to end (real etcd, daemons, flannelish-cni):
up -> check in every family -> verify per family -> a broken IPv6 path fails -> down;
VXLAN, host-gw and WireGuard (IPv6-only over flannel-wg-v6)."""

from __future__ import annotations

import json

import pytest

from flannelish.lab.state import load_state
from flannelish.testing.proc import run

pytestmark = pytest.mark.slow


def _assert_ok(result, *needles):
    assert result.returncode == 0, result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stdout, result.stdout


def _bypass_ipv6(state) -> None:
    """Break the lab: node1 sends one node2 pod's IPv6 traffic natively, not via flannel-v6."""
    victim = next(p for p in state.pods if p.node == "node2")
    run(["ip", "-6", "route", "add", f"{victim.ip6}/128", "via", state.node("node2").ip6,
         "dev", "eth0"], netns=state.node("node1").netns)  # fmt: skip


def test_dual_stack_lab_checks_and_verifies_both_families(lab_cli):
    _assert_ok(
        lab_cli.lab("up", "--nodes", "2", "--ip-family", "dual"),
        "198.18.0.0/24 + fd18::/64", "fd44::/48",
    )  # fmt: skip
    state = load_state(lab_cli.dir)
    assert state.spec.ip_family == "dual"
    conf = json.loads((lab_cli.dir / "net-conf.json").read_text())
    assert conf["EnableIPv6"] is True and conf["IPv6Network"] == "fd44::/48"
    for node in state.nodes:
        assert node.ip.startswith("198.18.0.") and node.ip6.startswith("fd18::")
        assert node.subnet.startswith("10.244.") and node.subnet6.startswith("fd44:")
    for pod in state.pods:
        assert pod.ip.startswith("10.244.") and pod.ip6.startswith("fd44:")

    _assert_ok(
        lab_cli.lab("check"),
        "check passed: 24/24 pairs reachable, 12/12 probes without NAT",
        "IPv4 12/12 pings, 6/6 probes",
        "IPv6 12/12 pings",
    )
    verified = lab_cli.verify()
    _assert_ok(
        verified, "verify passed", "IPv4: VNI 1 on every VXLAN packet",
        "IPv6: VNI 1 on every VXLAN packet", "VXLAN packets over IPv6",
        "IPv6: inner packets fit the overlay MTU (1430)",
        "IPv4: inner packets fit the overlay MTU (1450)",
    )  # fmt: skip
    assert "198.18.0.1, 198.18.0.2" in verified.stdout and "fd18::1, fd18::2" in verified.stdout

    _bypass_ipv6(state)
    broken = lab_cli.verify()
    assert broken.returncode == 1, broken.stdout
    assert "FAILED: IPv6: no pod-network packet crosses the underlay unencapsulated" in (
        broken.stderr
    )
    assert "FAILED: IPv4:" not in broken.stderr  # the IPv4 overlay is untouched
    assert "Traceback" not in broken.stderr
    _assert_ok(lab_cli.lab("down"), "removed")
    assert lab_cli.namespaces() == []


def test_ipv6_only_lab_has_no_ipv4_underlay_and_verifies_ipv6(lab_cli):
    _assert_ok(lab_cli.lab("up", "--nodes", "2", "--ip-family", "ipv6"), "fd18::/64", "[fd18::fe]")
    state = load_state(lab_cli.dir)
    conf = json.loads((lab_cli.dir / "net-conf.json").read_text())
    assert conf["EnableIPv4"] is False and "Network" not in conf
    node1 = state.node("node1")
    assert run(["ip", "-4", "-o", "addr", "show", "eth0"], netns=node1.netns).stdout == ""
    assert state.etcd_endpoint == "http://[fd18::fe]:2379"
    assert all(p.ip == p.ip6 and p.ip6.startswith("fd44:") for p in state.pods)

    _assert_ok(lab_cli.lab("check"), "check passed: 12/12 pairs reachable", "IPv6 12/12 pings")
    verified = lab_cli.verify()
    _assert_ok(verified, "verify passed: 10 assertions", "IPv6: VXLAN on UDP port 8472")
    assert "IPv4:" not in verified.stdout

    _bypass_ipv6(state)
    broken = lab_cli.verify()
    assert broken.returncode == 1, broken.stdout
    assert "FAILED: IPv6: every cross-node pod flow crossed inside VXLAN" in broken.stderr
    _assert_ok(lab_cli.lab("down"), "removed")
    assert lab_cli.namespaces() == []


def test_ipv6_only_host_gw_lab_routes_pods_natively(lab_cli):
    _assert_ok(lab_cli.lab("up", "--nodes", "2", "--ip-family", "ipv6", "--backend", "host-gw"))
    state = load_state(lab_cli.dir)
    peer = state.node("node2")
    routes = json.loads(run(["ip", "-j", "-6", "route"], netns=state.node("node1").netns).stdout)
    assert {"dst": peer.subnet6, "gateway": peer.ip6} in [
        {k: r.get(k) for k in ("dst", "gateway")} for r in routes
    ]
    _assert_ok(lab_cli.lab("check"), "check passed: 12/12 pairs reachable")
    _assert_ok(lab_cli.verify(), "verify passed", "IPv6: no VXLAN on the underlay")


def test_ipv6_only_wireguard_lab_encrypts_over_ipv6_on_flannel_wg_v6(lab_cli):
    _assert_ok(
        lab_cli.lab("up", "--nodes", "2", "--ip-family", "ipv6", "--backend", "wireguard"),
        "fd18::/64", "[fd18::fe]",
    )  # fmt: skip
    state = load_state(lab_cli.dir)
    node1 = state.node("node1")
    links = run(["ip", "-o", "link"], netns=node1.netns).stdout
    assert "flannel-wg-v6" in links and "flannel-wg:" not in links  # Mode separate, IPv6 only
    _assert_ok(lab_cli.lab("check"), "check passed: 12/12 pairs reachable", "IPv6 12/12 pings")
    verified = lab_cli.verify()
    _assert_ok(
        verified, "verify passed: 8 assertions",
        "IPv6: pod traffic crosses only as WireGuard udp/51821 between node IPs",
        "IPv6: no inner pod address or payload is readable in any underlay frame",
        "IPv6: every node completed a WireGuard handshake with every peer",
    )  # fmt: skip
    assert "IPv4:" not in verified.stdout
    shown = lab_cli.lab("exec", "node1", "--", "wg", "show").stdout
    assert "interface: flannel-wg-v6" in shown and "listening port: 51821" in shown
    assert "endpoint: [fd18::2]:51821" in shown and "latest handshake" in shown
    status = lab_cli.lab("exec", "node1", "--", "flannelish", "status").stdout
    assert f"{state.node('node2').subnet6} at [fd18::2]:51821: handshake" in status, status

    _bypass_ipv6(state)
    broken = lab_cli.verify()
    assert broken.returncode == 1, broken.stdout
    for failed in (
        "IPv6: pod traffic crosses only as WireGuard udp/51821 between node IPs",
        "IPv6: no inner pod address or payload is readable in any underlay frame",
    ):
        assert f"FAILED: {failed}" in broken.stderr, broken.stderr
    _assert_ok(lab_cli.lab("down"), "removed", "stopped 5 processes")  # etcd, 2 daemons, 2 wg-go
    assert lab_cli.namespaces() == []
