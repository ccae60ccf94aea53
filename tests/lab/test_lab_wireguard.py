"""`flannelish lab up --backend wireguard`, check, verify, lab exec, down: nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from flannelish.kernel.wireguard_go import node_wireguard_go
from flannelish.lab.state import load_state

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
