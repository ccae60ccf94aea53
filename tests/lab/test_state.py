"""Lab naming, the state file, and recognising our own processes (no root needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flannelish.errors import ConfigError, FlannelishError
from flannelish.lab import names, procs
from flannelish.lab.check import parse_ping
from flannelish.lab.state import LabSpec, LabState, NodeState, PodState, load_state, locked

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("bad", ["", "Lab", "a-b", "1lab", "x" * 13, "lab/..", "a b"])
def test_lab_names_that_could_collide_or_escape_are_refused(bad):
    with pytest.raises(ConfigError, match="invalid lab name"):
        names.validate_lab_name(bad)


def test_namespace_prefixes_of_two_labs_never_overlap():
    # "a" and "ab": neither prefix is a prefix of the other's namespaces.
    assert not names.netns_of("ab", "node1").startswith(names.netns_prefix("a"))
    assert names.netns_of("a", "node1-pod2") == "fl-a-node1-pod2"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("nodes", 0, "--nodes"), ("nodes", 51, "--nodes"), ("pods_per_node", -1, "--pods-per-node"),
     ("backend", "udp", "unknown backend")],
)  # fmt: skip
def test_lab_spec_rejects_out_of_range_values(field, value, message):
    with pytest.raises(ConfigError, match=message):
        LabSpec(**{field: value}).validate()


def test_network_config_carries_vni_and_port_for_vxlan_only():
    assert LabSpec().network_config()["Backend"] == {"Type": "vxlan", "VNI": 1, "Port": 8472}
    assert LabSpec(backend="host-gw").network_config()["Backend"] == {"Type": "host-gw"}


def test_state_round_trips_through_the_json_file(tmp_path):
    state = LabState(spec=LabSpec(name="t1", nodes=1), dir=str(tmp_path / "t1"))
    rec = procs.record("daemon node1", os.getpid(), "/x.log")
    state.nodes.append(NodeState("node1", "fl-t1-node1", "198.18.0.1", "d", "s", "c", daemon=rec))
    state.pods.append(PodState("node1-pod1", "node1", "fl-t1-node1-pod1", "cid", ip="10.244.1.2"))
    state.netns = ["fl-t1-ul", "fl-t1-node1"]
    state.save()
    loaded = load_state(tmp_path / "t1")
    assert loaded == state
    assert loaded.target_netns("node1-pod1") == "fl-t1-node1-pod1"
    assert loaded.target_netns("underlay") == ""  # never built in this test


def test_unknown_exec_target_lists_the_known_ones(tmp_path):
    state = LabState(spec=LabSpec(name="t1"), dir=str(tmp_path), underlay_netns="fl-t1-ul")
    state.nodes.append(NodeState("node1", "fl-t1-node1", "198.18.0.1", "d", "s", "c"))
    with pytest.raises(ConfigError, match=r"no node or pod named 'node9'.*node1"):
        state.target_netns("node9")


def test_a_damaged_state_file_is_reported_not_crashed_on(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(FlannelishError, match="cannot read lab state"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(FlannelishError, match="unknown format"):
        load_state(tmp_path)
    assert load_state(tmp_path / "missing") is None


def test_a_second_command_on_the_same_lab_is_refused_while_one_holds_the_lock(tmp_path):
    with locked(tmp_path), pytest.raises(FlannelishError, match="another"), locked(tmp_path):
        pass


def test_a_live_process_we_recorded_is_ours_until_it_exits():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rec = procs.record("sleeper", child.pid)
        assert procs.is_ours(rec)
        assert procs.stop_all([rec]) == []
        assert not procs.is_ours(rec)
    finally:
        child.kill()
        child.wait()


def test_a_recycled_pid_with_another_start_time_or_command_is_not_ours():
    rec = procs.record("me", os.getpid())
    assert procs.is_ours(rec)
    recycled = procs.record("me", os.getpid())
    recycled.starttime -= 1
    assert not procs.is_ours(recycled)
    other_cmd = procs.record("me", os.getpid())
    other_cmd.cmdline = ["/usr/bin/etcd"]
    assert not procs.is_ours(other_cmd)
    other_boot = procs.record("me", os.getpid())
    other_boot.boot_id = "not-this-boot"
    assert not procs.is_ours(other_boot)
    # stop_all must not signal any of them (we are still running afterwards).
    procs.stop_all([recycled, other_cmd, other_boot], timeout=0.1)


def test_ip_netns_exec_records_match_the_program_they_became():
    rec = procs.record("d", os.getpid())
    rec.cmdline = ["ip", "netns", "exec", "fl-x-node1", "python", *procs.cmdline(os.getpid())[1:]]
    assert procs.is_ours(rec)


def test_ping_summary_is_parsed_for_loss_and_average_rtt():
    out = (
        "--- 10.244.2.2 ping statistics ---\n"
        "3 packets transmitted, 2 received, 33.3333% packet loss, time 404ms\n"
        "rtt min/avg/max/mdev = 0.051/0.078/0.105/0.027 ms\n"
    )
    assert parse_ping(out) == (3, 2, 0.078)
    assert parse_ping("3 packets transmitted, 0 received, 100% packet loss") == (3, 0, None)
    assert parse_ping("ping: connect: Network is unreachable") == (0, 0, None)
