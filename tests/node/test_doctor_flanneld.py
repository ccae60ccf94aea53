"""`flannelish doctor` notices flanneld: running beside the flannelish daemon in one network
namespace, or its leftovers (routes through the overlay, a metric-0 blackhole, iptables
chains).  The check is pure; the facts come from /proc and `ip` in the node's namespace."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Network

import pytest

from flannelish.node.checks import Severity
from flannelish.node.facts import NodeFacts
from flannelish.node.flanneld_checks import check_flanneld
from flannelish.node.flanneld_facts import FlanneldFacts
from flannelish.testing.proc import stop_pid

from .test_doctor_netns import doctor, findings


def facts(**kw) -> NodeFacts:
    return NodeFacts("/run/flannel/subnet.env", flanneld=FlanneldFacts(**kw))


@pytest.mark.unit
def test_both_running_is_an_error_with_the_fix():
    [f] = check_flanneld(facts(flanneld_pids=[10], daemon_pids=[20]))
    assert f.severity is Severity.ERROR and "PID 10" in f.message and "PID 20" in f.message
    assert "systemctl disable --now flanneld" in f.fix


@pytest.mark.unit
def test_flanneld_alone_is_a_warning_and_its_kernel_state_no_leftover():
    found = check_flanneld(
        facts(flanneld_pids=[10], foreign_routes=[("10.244.7.0/24", "x", "boot")])
    )
    assert [f.severity for f in found] == [Severity.WARNING]


@pytest.mark.unit
def test_our_table_left_beside_a_running_flanneld_is_a_warning():
    found = check_flanneld(facts(flanneld_pids=[10], our_table=True))
    assert [f.severity for f in found] == [Severity.WARNING, Severity.WARNING]
    assert "nft delete table ip flannelish" in found[1].fix
    # With the flannelish daemon running the table is its own: only the error.
    found = check_flanneld(facts(flanneld_pids=[10], daemon_pids=[20], our_table=True))
    assert [f.severity for f in found] == [Severity.ERROR]


@pytest.mark.unit
def test_our_unused_nexthops_beside_flanneld_are_named_with_a_safe_fix():
    """Back on flanneld, its VXLAN routes replaced ours; the nexthops they used stay."""
    runs, f = check_flanneld(facts(flanneld_pids=[10], unused_nexthops=[1073741825, 1073741826]))
    assert runs.severity is Severity.WARNING  # flanneld runs: what it should do now
    assert f.severity is Severity.INFO and "2 nexthop object(s)" in f.message
    assert f.fix == "ip nexthop flush protocol 70"
    # Some of ours still carry a route: only the unused ones, by id.
    _, f = check_flanneld(
        facts(flanneld_pids=[10], unused_nexthops=[1073741825], nexthops_in_use=True)
    )
    assert f.fix == "ip nexthop del id 1073741825"
    # The daemon's own, while it runs: not leftovers.
    assert check_flanneld(facts(daemon_pids=[20], unused_nexthops=[1073741825])) == []
    assert (
        len(check_flanneld(facts(flanneld_pids=[10], daemon_pids=[20], unused_nexthops=[5]))) == 1
    )


@pytest.mark.unit
def test_leftovers_after_flanneld_stopped():
    found = check_flanneld(
        facts(
            foreign_routes=[("10.244.99.0/24", "10.244.99.0", "boot")],
            foreign_blackholes=[("10.244.5.0/24", "boot", 0), ("10.244.5.0/24", "static", 9)],
            iptables_chains=["nat FLANNEL-POSTRTG", "filter FLANNEL-FWD"],
        )
    )
    assert [f.severity for f in found] == [Severity.WARNING, Severity.WARNING, Severity.INFO]
    assert "ip route del 10.244.99.0/24 proto boot" in found[0].fix
    assert "ip route del blackhole 10.244.5.0/24 proto boot" in found[1].fix
    assert "FLANNEL-POSTRTG" in found[2].message


@pytest.mark.unit
def test_an_ipv6_leftover_names_the_ipv6_device():
    from flannelish.node.facts import LinkFacts

    f = facts(foreign_routes=[("fd44:0:0:63::/64", "fd44:0:0:63::", "boot")])
    f.links = {name: LinkFacts(name, 1450, "vxlan") for name in ("flannel.1", "flannel-v6.1")}
    [found] = check_flanneld(f)
    assert "dev flannel-v6.1" in found.message
    assert "ip route del fd44:0:0:63::/64 proto boot" in found.fix


@pytest.mark.unit
def test_nothing_to_say_on_a_clean_node():
    assert check_flanneld(facts()) == []
    assert check_flanneld(NodeFacts("x")) == []


def test_doctor_sees_a_flanneld_process_and_its_routes_in_the_node_namespace(underlay, tmp_path):
    host = underlay.add_host("n1", 1)
    host.run("ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local",
             str(host.ip), "dev", "eth0", "dstport", "8472", "nolearning")  # fmt: skip
    host.run("ip", "link", "set", "flannel.1", "up")
    host.run("ip", "route", "add", "10.244.99.0/24", "via", "10.244.99.0", "dev", "flannel.1",
             "onlink")  # fmt: skip
    env_file = tmp_path / "subnet.env"
    env_file.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n"
                        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")  # fmt: skip
    host.run("ip", "route", "add", "blackhole", str(IPv4Network("10.244.5.0/24")))
    # And flanneld's IPv6 device with a route of a dual-stack peer that is gone.
    host.run("ip", "link", "add", "flannel-v6.1", "type", "vxlan", "id", "1", "local",
             "fd18::1", "dev", "eth0", "dstport", "8472", "nolearning")  # fmt: skip
    host.run("ip", "link", "set", "flannel-v6.1", "up")
    host.run("ip", "-6", "route", "add", "fd44:0:0:63::/64", "via", "fd44:0:0:63::", "dev",
             "flannel-v6.1", "onlink")  # fmt: skip
    args = ["--no-etcd", "--subnet-file", str(env_file)]
    left = {f["message"][:30]: f for f in findings(doctor(host.netns, *args))["flanneld"]}
    assert any("10.244.99.0/24" in k for k in left), left
    assert any("fd44:0:0:63::/64" in k for k in left), left
    assert any(k.startswith("blackhole route") for k in left), left
    # A process called flanneld in this namespace (a copy of sleep): named, and no
    # leftovers reported while it runs.
    fake = tmp_path / "flanneld"
    shutil.copy(shutil.which("sleep"), fake)
    proc = subprocess.Popen(["ip", "netns", "exec", host.netns, str(fake), "60"])
    try:
        found = findings(doctor(host.netns, *args))["flanneld"]
        assert [f["severity"] for f in found] == ["warning"], found
        assert f"PID {proc.pid}" in found[0]["message"]
        # Not seen from another namespace.
        other = underlay.add_host("n2", 2)
        assert findings(doctor(other.netns, *args))["flanneld"] == []
    finally:
        stop_pid(proc.pid, proc=proc)
