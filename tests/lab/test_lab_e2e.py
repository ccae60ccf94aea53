"""The lab end to end, with the real etcd, daemons and flannelish-cni:
up -> check -> verify -> (broken) verify -> down, leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from scapy.utils import RawPcapReader

from flannelish.lab import procs
from flannelish.lab.offloads import ETHTOOL
from flannelish.lab.state import load_state
from flannelish.testing.proc import run

pytestmark = pytest.mark.slow


def _links(netns: str | None = None) -> set[str]:
    out = run(["ip", "-o", "link"], netns=netns).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _assert_ok(result, *needles):
    assert result.returncode == 0, result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stdout, result.stdout


def test_lab_up_check_verify_down_leaves_nothing_behind(lab_cli, tmp_path):
    root_links = _links()

    started = time.monotonic()
    up = lab_cli.lab("up")
    up_seconds = time.monotonic() - started
    _assert_ok(up, "is up in", "node1", "node3", "VTEP MAC")
    assert up_seconds < 15, f"lab up took {up_seconds:.1f}s"
    state = load_state(lab_cli.dir)
    assert state is not None and state.phase == "up"
    assert len(state.nodes) == 3 and len(state.pods) == 6
    assert len(lab_cli.namespaces()) == 1 + 3 + 6
    lab_links = set().union(*(_links(ns) for ns in lab_cli.namespaces()))
    for pod in state.pods:
        assert pod.ip in up.stdout

    _assert_ok(lab_cli.lab("up"), "already up")  # idempotent: reports, builds nothing
    assert load_state(lab_cli.dir).etcd == state.etcd
    _assert_ok(lab_cli.lab("status"), "running")

    pod = state.pods[2]
    shown = lab_cli.lab("exec", pod.name, "--", "ip", "-4", "-o", "addr", "show", "eth0")
    _assert_ok(shown, f"inet {pod.ip}/")
    # Our own commands work inside the lab, against the lab's etcd, with no set-up.
    leases = lab_cli.lab("exec", "node1", "--", "flannelish", "leases", "--json")
    _assert_ok(leases, *(node.subnet for node in state.nodes))

    _assert_ok(
        lab_cli.lab("check"), "check passed: 30/30 pairs reachable", "10/10 probes without NAT"
    )

    pcap = tmp_path / "overlay.pcap"
    verified = lab_cli.verify("--pcap", str(pcap))
    _assert_ok(verified, "verify passed", "VNI 1 on every VXLAN packet")
    with RawPcapReader(str(pcap)) as reader:
        assert sum(1 for _ in reader) > 50
    # verify turned segmentation off only while it captured: the nodes have it back.
    for node in state.nodes:
        features = run([ETHTOOL, "-k", "eth0"], netns=node.netns).stdout
        assert "tcp-segmentation-offload: on" in features, node.name
        assert "generic-segmentation-offload: on" in features, node.name

    # Break the lab: one pod's traffic from node1 now bypasses flannel.1.
    victim = next(p for p in state.pods if p.node == "node2")
    node1 = state.node("node1")
    run(["ip", "route", "add", f"{victim.ip}/32", "via", state.node("node2").ip, "dev", "eth0"],
        netns=node1.netns)  # fmt: skip
    broken = lab_cli.verify()
    assert broken.returncode == 1, broken.stdout
    assert "FAILED: no pod-network packet crosses the underlay unencapsulated" in broken.stderr
    assert "FAILED: every cross-node pod flow crossed inside VXLAN" in broken.stderr
    assert "Traceback" not in broken.stderr

    # The overlay runs VNI 1; a verifier told the network uses VNI 7 must object.
    doc = json.loads((lab_cli.dir / "state.json").read_text())
    doc["spec"]["vni"] = 7
    (lab_cli.dir / "state.json").write_text(json.dumps(doc))
    wrong_vni = lab_cli.verify()
    assert wrong_vni.returncode == 1
    assert "FAILED: VNI 7 on every VXLAN packet:" in wrong_vni.stderr
    assert "with VNI 1" in wrong_vni.stderr

    # A crash: the daemon of node2 and etcd die hard; status says so, down still cleans up.
    os.kill(state.node("node2").daemon.pid, signal.SIGKILL)
    os.kill(state.etcd.pid, signal.SIGKILL)
    time.sleep(0.2)
    status = lab_cli.lab("status")
    assert status.returncode == 1 and "down" in status.stdout
    again = lab_cli.lab("up")
    assert again.returncode == 1
    assert "exists but is degraded: etcd, node2 down" in again.stderr

    started = time.monotonic()
    down = lab_cli.lab("down")
    down_seconds = time.monotonic() - started
    _assert_ok(down, "removed")
    assert down_seconds < 5, f"lab down took {down_seconds:.1f}s"
    assert lab_cli.namespaces() == []
    assert not any(procs.is_ours(r) for r in state.procs())
    assert not lab_cli.dir.exists()
    # IPAM state lived in the lab dir, not in the CNI default /var/lib/cni/networks/<net>.
    assert not (Path("/var/lib/cni/networks") / f"fl-{lab_cli.name}").exists()
    # Other tests may add root links meanwhile; none of ours may have landed there.
    assert (_links() - root_links) & lab_links == set()
    _assert_ok(lab_cli.lab("down"), "nothing to do")
    print(f"\nlab up {up_seconds:.2f}s, lab down {down_seconds:.2f}s")


def test_a_failing_lab_up_tears_down_and_says_where_the_logs_are(lab_cli):
    # An out-of-range flag value in the environment makes every daemon exit at once.
    failed = lab_cli.lab("up", "--nodes", "2", env={"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "99999"})
    assert failed.returncode != 0
    assert "lab up failed at step '2 daemons (flannelish daemon)'" in failed.stderr
    assert f"logs are in {lab_cli.dir / 'logs'}" in failed.stderr
    assert "Traceback" not in failed.stderr
    state = load_state(lab_cli.dir)
    assert state.phase == "failed" and "daemon" in state.error
    assert lab_cli.namespaces() == []
    assert not any(procs.is_ours(r) for r in state.procs())
    assert (lab_cli.dir / "logs" / "node1-daemon.log").read_text()
    status = lab_cli.lab("status")
    assert status.returncode == 1 and "failed" in status.stdout
    _assert_ok(lab_cli.lab("down"), "removed")
    assert not lab_cli.dir.exists()


def test_host_gw_lab_routes_pods_natively_and_verify_proves_it(lab_cli):
    _assert_ok(lab_cli.lab("up", "--backend", "host-gw", "--nodes", "2"), "host-gw")
    state = load_state(lab_cli.dir)
    routes = json.loads(run(["ip", "-j", "route"], netns=state.node("node1").netns).stdout)
    peer = state.node("node2")
    assert {"dst": peer.subnet, "gateway": peer.ip} in [
        {k: r.get(k) for k in ("dst", "gateway")} for r in routes
    ]
    _assert_ok(lab_cli.lab("check"), "check passed: 12/12 pairs reachable")
    _assert_ok(lab_cli.verify(), "verify passed", "no VXLAN on the underlay")
    _assert_ok(lab_cli.lab("down"), "removed")
    assert lab_cli.namespaces() == []


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = procs.cmdline(int(entry)) or []
            if any(text in arg for arg in argv) and not procs.zombie(int(entry)):
                found.append(int(entry))
    return found


def test_lab_down_cleans_up_after_lab_up_was_killed_half_way(lab_cli):
    up = subprocess.Popen(
        lab_cli.argv(["lab", "up"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = load_state(lab_cli.dir) if (lab_cli.dir / "state.json").exists() else None
            if state is not None and any(n.daemon for n in state.nodes):
                break
            time.sleep(0.01)
        up.send_signal(signal.SIGKILL)  # no chance to clean up after itself
    finally:
        up.wait()
    state = load_state(lab_cli.dir)
    assert state.phase == "building"
    assert lab_cli.namespaces()
    assert _processes_mentioning(f"{lab_cli.dir}/")  # etcd and daemons survived the kill

    _assert_ok(lab_cli.lab("down"), "removed")
    assert lab_cli.namespaces() == []
    assert _processes_mentioning(f"{lab_cli.dir}/") == []
    assert not lab_cli.dir.exists()
