"""The lab with network policy: real daemons (--policy), the real CNI plugin, VXLAN.

`lab up --pods e2e` on 2 nodes, then `lab check --policy FILE` for a few of
Kubernetes' cases in a row (each change applied while the lab runs): the full
TCP/UDP 80/81 matrix must match the model, same-node and cross-node.
"""

from __future__ import annotations

import json

import pytest

from flannelish.policy import cases

pytestmark = pytest.mark.slow


def test_lab_up_with_pods_and_check_policy(lab_cli, tmp_path) -> None:
    up = lab_cli.lab("up", "--nodes", "2", "--pods-per-node", "0", "--pods", "e2e")
    assert up.returncode == 0, up.stdout + up.stderr
    for case in ("ns-or-pod-two-peers", "egress-to-one-namespace", "default-deny-ingress"):
        path = tmp_path / f"{case}.json"
        path.write_text(json.dumps(cases.CASES[case]))
        check = lab_cli.lab("check", "--policy", str(path))
        assert check.returncode == 0, check.stdout + check.stderr
        assert "policy check passed: 324/324" in check.stdout
    run = lab_cli._run(["lab", "exec"], ("node1", "--", "flannelish", "endpoints"), None)
    assert run.stdout.count("pod=") == 9, run.stdout
    doctor = lab_cli._run(["lab", "exec"], ("node1", "--", "flannelish", "doctor"), None)
    assert "network policy enforced" in doctor.stdout, doctor.stdout
