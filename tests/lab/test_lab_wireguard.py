"""`flannelish lab up --backend wireguard` (IPv4, and dual-stack with a device per family),
check, verify, lab exec, down: nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from flannelish.kernel.wireguard_go import node_wireguard_go
from flannelish.lab.state import load_state
from flannelish.testing.proc import run

from .test_lab_e2e import _assert_ok

pytestmark = pytest.mark.slow


def test_wireguard_lab_encrypts_and_verify_proves_it(lab_cli):
    _assert_ok(lab_cli.lab("up", "--backend", "wireguard", "--nodes", "2"), "wireguard")
    state = load_state(lab_cli.dir)
    pids = []
    for node in state.nodes:
        go = node_wireguard_go(Path(node.subnet_file).parent)
        assert go is not None and go.private_run, node.name
        pids.append(go.pid)
    _assert_ok(lab_cli.lab("check"), "check passed: 12/12 pairs reachable")
    _assert_ok(
        lab_cli.verify(),
        "verify passed",
        "no inner pod address or payload is readable in any underlay frame",
        "every node completed a WireGuard handshake with every peer",
    )
    # `lab exec NODE -- wg show` sees that node's own device, and status/doctor explain it.
    shown = lab_cli.lab("exec", "node1", "--", "wg", "show", "flannel-wg")
    assert "listening port: 51820" in shown.stdout and "latest handshake" in shown.stdout
    status = lab_cli.lab("exec", "node1", "--", "flannelish", "status")
    assert "userspace (wireguard-go)" in status.stdout, status.stdout + status.stderr
    doctor = lab_cli.lab("exec", "node1", "--", "flannelish", "doctor")
    assert "no WireGuard module" in doctor.stdout and "missing" not in doctor.stdout
    _assert_ok(
        lab_cli.lab("down"), "removed", "stopped 5 processes"
    )  # etcd, 2 daemons, 2 wireguard-go
    assert lab_cli.namespaces() == []
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or b"wireguard-go" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )


def _bypass_ipv6(state) -> None:
    """Break the lab: node1 sends one node2 pod's IPv6 traffic natively, not via flannel-wg-v6."""
    victim = next(p for p in state.pods if p.node == "node2")
    run(["ip", "-6", "route", "add", f"{victim.ip6}/128", "via", state.node("node2").ip6,
         "dev", "eth0"], netns=state.node("node1").netns)  # fmt: skip


def _wireguard_go_pids(state) -> list[int]:
    found = []
    for node in state.nodes:
        for device in ("flannel-wg", "flannel-wg-v6"):
            go = node_wireguard_go(Path(node.subnet_file).parent, device)
            if go is not None:
                assert go.private_run, (node.name, device)
                found.append(go.pid)
    return found


def test_dual_stack_wireguard_lab_encrypts_each_family_on_its_own_device(lab_cli, tmp_path):
    _assert_ok(
        lab_cli.lab("up", "--backend", "wireguard", "--nodes", "2", "--ip-family", "dual"),
        "198.18.0.0/24 + fd18::/64", "fd44::/48",
    )  # fmt: skip
    state = load_state(lab_cli.dir)
    pids = _wireguard_go_pids(state)
    assert len(pids) == 4  # Mode separate: flannel-wg and flannel-wg-v6 on each node
    _assert_ok(
        lab_cli.lab("check"),
        "check passed: 24/24 pairs reachable, 12/12 probes without NAT",
        "IPv4 12/12 pings, 6/6 probes", "IPv6 12/12 pings",
    )  # fmt: skip
    verified = lab_cli.verify("--report", str(tmp_path / "report"))
    _assert_ok(
        verified, "verify passed: 15 assertions",
        "IPv4: pod traffic crosses only as WireGuard udp/51820 between node IPs",
        "IPv6: pod traffic crosses only as WireGuard udp/51821 between node IPs",
        "IPv6: no inner pod address or payload is readable in any underlay frame",
        "IPv6: every node completed a WireGuard handshake with every peer",
        "✓ journey icmp6-cross", "✓ journey tcp-cross",
    )  # fmt: skip
    page = (tmp_path / "report" / "index.html").read_text()  # the details, unwrapped
    for needle in (
        "udp/51820, udp/51821, encrypted",
        "WireGuard packets over IPv6",
        "handshakes on flannel-wg-v6",
        "outer fd18::1 → fd18::2, udp/51821",
    ):
        assert needle in page, needle  # fmt: skip
    dot = tmp_path / "lab.dot"
    _assert_ok(lab_cli.lab("diagram", "--out", str(dot)), "1 peer links, 0 problems")
    assert "udp/51821 fd18::1 ↔ fd18::2" in dot.read_text()

    # `wg show` in a node sees both of its devices; status lists each with its peers.
    shown = lab_cli.lab("exec", "node1", "--", "wg", "show").stdout
    assert "interface: flannel-wg\n" in shown and "interface: flannel-wg-v6\n" in shown
    assert "endpoint: 198.18.0.2:51820" in shown and "endpoint: [fd18::2]:51821" in shown
    status = lab_cli.lab("exec", "node1", "--", "flannelish", "status").stdout
    assert "flannel-wg-v6  IPv6, udp/51821, wireguard-go pid" in status, status
    assert f"{state.node('node2').subnet6} at [fd18::2]:51821: handshake" in status, status

    _bypass_ipv6(state)
    broken = lab_cli.verify()
    assert broken.returncode == 1, broken.stdout
    assert (
        "FAILED: IPv6: pod traffic crosses only as WireGuard udp/51821 between node IPs"
        in broken.stderr
    )
    assert "FAILED: IPv4:" not in broken.stderr and "Traceback" not in broken.stderr
    _assert_ok(lab_cli.lab("down"), "removed", "stopped 7 processes")  # etcd, 2 daemons, 4 wg-go
    assert lab_cli.namespaces() == []
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or b"wireguard-go" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
