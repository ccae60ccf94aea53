"""doctor's checks on hand-built NodeFacts (no root, no kernel)."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path

import pytest
from click.testing import CliRunner

from flannelish.cli import cli
from flannelish.cli.node import node_ops_options
from flannelish.node.checks import (
    Severity,
    check_leases,
    check_mtu,
    check_subnet_env,
    check_sysctls,
)
from flannelish.node.doctor import run_checks
from flannelish.node.facts import (
    SYSCTL_BRIDGE_NF,
    SYSCTL_FORWARD,
    LinkFacts,
    NodeFacts,
    parse_links,
)
from flannelish.node.firewall_checks import check_firewall
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.subnet_env import SubnetEnv

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
ENV = SubnetEnv(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.1.0/24"), 1450, False)


def links(dev_mtu: int = 1450, ul_mtu: int = 1500, cni_mtu: int = 1450) -> dict[str, LinkFacts]:
    return {
        "eth0": LinkFacts("eth0", ul_mtu, "veth"),
        "flannel.1": LinkFacts(
            "flannel.1", dev_mtu, "vxlan", "eth0", 8472, IPv4Address("198.18.0.1")
        ),
        "cni0": LinkFacts("cni0", cni_mtu, "bridge"),
    }


def healthy(**changes) -> NodeFacts:
    facts = NodeFacts(
        "/run/flannel/subnet.env",
        subnet_env=ENV,
        links=links(),
        default_iface="eth0",
        sysctls={SYSCTL_FORWARD: "1", SYSCTL_BRIDGE_NF: "1"},
        ruleset=[],
        leases=[lease(1, "198.18.0.1", "0a:00:00:00:00:01"),
                lease(2, "198.18.0.2", "0a:00:00:00:00:02")],
        now=NOW,
    )  # fmt: skip
    return dataclasses.replace(facts, **changes)


def lease(n: int, ip: str, mac: str | None = None, expires: float | None = NOW + 20 * 3600,
          backend: str = "vxlan") -> Lease:  # fmt: skip
    data = {"VNI": 1, "VtepMAC": mac} if mac else None
    attrs = LeaseAttrs(IPv4Address(ip), backend, data)
    return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs, expires, lease_id=n)


def test_a_healthy_node_has_no_findings():
    report = run_checks(healthy())
    assert report.findings == [] and report.ok


def test_missing_or_broken_subnet_env():
    (f,) = check_subnet_env(healthy(subnet_env=None))
    assert f.severity is Severity.ERROR and "does not exist" in f.message and f.fix
    (f,) = check_subnet_env(healthy(subnet_env=None, subnet_env_error="invalid FLANNEL_MTU"))
    assert "unreadable" in f.message


def test_overlay_mtu_larger_than_underlay_allows():
    # the device is too big AND disagrees with subnet.env
    findings = check_mtu(healthy(links=links(dev_mtu=1500)))
    messages = " | ".join(x.message for x in findings)
    assert "flannel.1 MTU 1500 exceeds eth0 MTU 1500 - 50 = 1450" in messages
    assert "FLANNEL_MTU=1450 but flannel.1 has MTU 1500" in messages
    assert all(x.severity is Severity.ERROR for x in findings)
    assert "ip link set flannel.1 mtu 1450" in findings[0].fix


def test_jumbo_underlay_with_small_overlay_is_fine_but_bridge_bigger_than_pods_is_not():
    assert check_mtu(healthy(links=links(ul_mtu=9000))) == []
    (f,) = check_mtu(healthy(links=links(cni_mtu=1500)))
    assert f.severity is Severity.WARNING and "cni0 MTU 1500" in f.message


def test_host_gw_node_compares_subnet_env_with_the_underlay():
    no_vxlan = {"eth0": LinkFacts("eth0", 1400, "veth")}
    env = ENV._replace(mtu=1500)
    (f,) = check_mtu(healthy(links=no_vxlan, subnet_env=env))
    assert "FLANNEL_MTU=1500 exceeds eth0 MTU 1400" in f.message


def test_sysctls():
    findings = check_sysctls(healthy(sysctls={SYSCTL_FORWARD: "0", SYSCTL_BRIDGE_NF: None}))
    assert [f.severity for f in findings] == [Severity.ERROR, Severity.WARNING]
    assert "ip_forward is 0" in findings[0].message and "br_netfilter" in findings[1].message
    (f,) = check_sysctls(healthy(sysctls={SYSCTL_FORWARD: "1", SYSCTL_BRIDGE_NF: "0"}))
    assert "bridge-nf-call-iptables is 0" in f.message


def _chain(table, name, hook, policy="accept", family="inet"):
    return {"chain": {"family": family, "table": table, "name": name, "hook": hook, "prio": 0,
                      "policy": policy}}  # fmt: skip


def _udp_drop(table, chain, port, handle=4, family="inet"):
    return {"rule": {"family": family, "table": table, "chain": chain, "handle": handle, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                   "right": port}}, {"drop": None}]}}  # fmt: skip


def test_firewall_dropping_the_vxlan_port_is_an_error_naming_the_rule():
    ruleset = [_chain("fw", "in", "input"), _udp_drop("fw", "in", 8472)]
    (f,) = check_firewall(healthy(ruleset=ruleset))
    assert f.severity is Severity.ERROR
    assert (
        "VXLAN (udp/8472) from peer 198.18.0.2 is dropped by table inet fw, chain in" in f.message
    )
    assert "nft insert rule inet fw in udp dport 8472 accept" in f.fix
    assert check_firewall(healthy(ruleset=[_chain("fw", "in", "input"),
                                           _udp_drop("fw", "in", 4789)])) == []  # fmt: skip


def test_a_rule_admitting_only_new_vxlan_drops_the_peers_untracked_tunnel():
    # Foreign input chain: policy drop, `ct state new udp dport 8472 accept`.
    admit_new = {"rule": {"family": "inet", "table": "fw", "chain": "in", "handle": 5, "expr": [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                   "right": 8472}}, {"accept": None}]}}  # fmt: skip
    foreign = [_chain("fw", "in", "input", "drop"), admit_new]
    assert check_firewall(healthy(ruleset=foreign)) == []  # tracked: the packet is new
    # Our table skips conntrack for the tunnel from peers: they arrive untracked.
    notrack = _chain("flannelish", "prerouting", "prerouting", family="ip")
    (f,) = check_firewall(healthy(ruleset=[*foreign, notrack]))
    assert "VXLAN (udp/8472) from peer 198.18.0.2 is dropped by table inet fw" in f.message


def test_foreign_forward_drop_policy_is_reported_but_our_own_table_is_not():
    (f,) = check_firewall(healthy(ruleset=[_chain("filter", "FORWARD", "forward", "drop", "ip")]))
    assert "forwarded pod traffic (10.244.0.0/16) is dropped by table ip filter" in f.message
    ours = [_chain("flannelish", "forward", "forward", "drop", "ip")]
    assert check_firewall(healthy(ruleset=ours)) == []


def test_peer_missing_from_our_anti_spoof_set_is_reported():
    ruleset = [
        {"set": {"family": "ip", "table": "flannelish", "name": "vxlan_peers", "elem": []}},
        _chain("flannelish", "input", "input", family="ip"),
        {"rule": {"family": "ip", "table": "flannelish", "chain": "input", "handle": 7, "expr": [
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": "@vxlan_peers"}}, {"drop": None}]}},
    ]  # fmt: skip
    (f,) = check_firewall(healthy(ruleset=ruleset))
    assert "missing from set vxlan_peers" in f.message and "198.18.0.2" in f.message
    # without leases the anti-spoof rule is expected to drop unknown sources
    assert check_firewall(healthy(ruleset=ruleset, leases=None)) == []


def test_duplicate_public_ips_and_vtep_macs():
    leases = [
        lease(1, "198.18.0.1", "0a:00:00:00:00:01"),
        lease(2, "10.0.2.15", "0a:00:00:00:00:02"),
        lease(3, "10.0.2.15", "0a:00:00:00:00:02"),
    ]
    findings = check_leases(healthy(leases=leases))
    assert len(findings) == 2 and all(f.severity is Severity.ERROR for f in findings)
    assert "PublicIP 10.0.2.15 is advertised by 2 leases (10.244.2.0/24, 10.244.3.0/24)" in (
        findings[0].message
    )
    assert "etcdctl del /coreos.com/network/subnets/10.244.3.0-24" in findings[0].fix
    assert "VTEP MAC 0a:00:00:00:00:02 is used by 2 leases" in findings[1].message


def test_the_key_to_delete_keeps_a_dual_stack_lease_ipv6_half():
    stale = dataclasses.replace(
        lease(3, "198.18.0.3", expires=NOW - 60), ipv6_subnet=IPv6Network("fd00:0:0:3::/64")
    )
    (f,) = check_leases(healthy(leases=[lease(1, "198.18.0.1"), stale]))
    assert f.fix == "`etcdctl del /coreos.com/network/subnets/10.244.3.0-24&fd00:0:0:3::-64`"


def test_stale_expired_mixed_and_missing_own_lease():
    leases = [
        lease(2, "198.18.0.2", expires=NOW + 600),  # should have renewed 50 min ago
        lease(3, "198.18.0.3", expires=NOW - 5),
        lease(4, "198.18.0.4", expires=None, backend="host-gw"),  # reservation: never stale
    ]
    findings = check_leases(healthy(leases=leases))
    text = [f.message for f in findings]
    assert any("10.244.2.0/24 (198.18.0.2) was not renewed in time" in m for m in text)
    assert any("10.244.3.0/24 (198.18.0.3) expired 5 s ago" in m for m in text)
    assert any("different backends (host-gw: 1, vxlan: 2)" in m for m in text)
    assert any("this node's subnet 10.244.1.0/24" in m for m in text)


def test_facts_that_could_not_be_gathered_are_reported_as_info():
    facts = healthy(links=None, ruleset=None, ruleset_error="nft: not found", leases=None,
                    leases_error="etcd: connection refused")  # fmt: skip
    report = run_checks(facts)
    assert report.ok
    assert {f.check for f in report.findings if f.severity is Severity.INFO} == {"mtu", "firewall"}
    (etcd,) = [f for f in report.findings if f.check == "leases"]
    assert etcd.severity is Severity.WARNING and "connection refused" in etcd.message
    (skipped,) = check_leases(healthy(leases=None))
    assert skipped.severity is Severity.INFO


def test_parse_links_reads_vxlan_attributes():
    doc = [
        {"ifname": "eth0", "mtu": 1500, "linkinfo": {"info_kind": "veth"}},
        {"ifname": "flannel.1", "mtu": 1450, "linkinfo": {"info_kind": "vxlan", "info_data": {
            "id": 1, "local": "198.18.0.1", "link": "eth0", "port": 8472}}},
        {"ifname": "lo", "mtu": 65536},
    ]  # fmt: skip
    parsed = parse_links(doc)
    assert parsed["flannel.1"] == LinkFacts(
        "flannel.1", 1450, "vxlan", "eth0", 8472, IPv4Address("198.18.0.1")
    )
    assert parsed["lo"].kind == ""


def test_status_without_a_port_is_a_config_error_and_unreachable_daemon_is_8():
    runner = CliRunner()
    result = runner.invoke(cli, ["status"], env={"FLANNELD_HEALTHZ_PORT": ""})
    assert result.exit_code == 3 and "health port is not known" in result.output
    result = runner.invoke(cli, ["status", "--healthz-ip", "127.0.0.1", "--healthz-port", "1"])
    assert result.exit_code == 8 and "daemon not reachable at http://127.0.0.1:1/status" in (
        result.output
    )


def test_doctor_cli_exit_status_and_json(tmp_path: Path):
    result = CliRunner().invoke(
        cli, ["doctor", "--no-etcd", "--json", "--subnet-file", str(tmp_path / "nope.env")]
    )
    assert result.exit_code == 1  # missing subnet.env is an error
    assert '"check": "subnet-env"' in result.stdout


def test_status_reads_the_health_server_and_exits_1_when_not_ready():
    import json

    from flannelish.node.health import HealthServer, NodeState

    state = NodeState(node="n1", backend="vxlan", device="flannel.1")
    server = HealthServer(state, "127.0.0.1", 0).start()
    port = str(server.address[1])
    runner = CliRunner()
    try:
        result = runner.invoke(cli, ["status", "--healthz-ip", "127.0.0.1", "--healthz-port", port])
        assert result.exit_code == 1 and "NOT READY" in result.stdout
        assert "no lease held" in result.stdout
        state.set_lease("10.244.1.0/24", None, public_ip="198.18.0.1", network="10.244.0.0/16")
        state.set_subnet_env_written("/run/flannel/subnet.env")
        state.set_peers(3, 2, {"10.244.9.0/24": "not on-link"})
        state.record_reconcile(0.004, 1, 0)
        result = runner.invoke(cli, ["status", "--healthz-port", port])  # 0.0.0.0 -> loopback
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "ready" in out and "10.244.1.0/24 of 10.244.0.0/16 via 198.18.0.1" in out
        assert "2 programmed of 3 in etcd, 1 skipped" in out and "never (reservation)" in out
        result = runner.invoke(cli, ["status", "--json", "--healthz-port", port])
        assert result.exit_code == 0 and json.loads(result.stdout)["peers"]["programmed"] == 2
        # IPv6 text as it is: rich would turn ":b:" into an emoji (fd44:0:0🅱:/64).
        state.set_peers(3, 2, {"fd44:0:0:b::/64": "PublicIPv6 fd18::a:b:c is our own"})
        out = runner.invoke(cli, ["status", "--healthz-port", port]).stdout
        assert "skipped fd44:0:0:b::/64: PublicIPv6 fd18::a:b:c is our own" in out
    finally:
        server.stop()


def test_node_ops_options_decorator_for_the_daemon():
    import click

    seen = {}

    @click.command()
    @click.option("--ip-masq/--no-ip-masq", default=False)
    @node_ops_options
    def cmd(ip_masq, node_ops):
        seen["ops"] = node_ops

    result = CliRunner().invoke(
        cmd, ["--ip-masq", "--healthz-port", "9099", "--vxlan-allow-any"], env={}
    )
    assert result.exit_code == 0, result.output
    ops = seen["ops"]
    assert (ops.ip_masq, ops.vxlan_allow_any, ops.healthz_ip, ops.healthz_port) == (
        True,
        True,
        "0.0.0.0",
        9099,
    )
    result = CliRunner().invoke(cmd, ["--healthz-port", "70000"])
    assert result.exit_code == 2


LEGACY = """# Generated by iptables-save v1.8.9
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p udp -m udp --dport 8472 -j DROP
COMMIT
*filter
:INPUT {policy} [0:0]
:FORWARD ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 8472 -j DROP
-A INPUT -s 198.19.0.0/24 -p udp -m udp --dport 8000:9000 -j DROP
{rules}
COMMIT
"""


def test_legacy_iptables_rules_invisible_to_nft_are_read_from_iptables_save():
    from flannelish.node.firewall_checks import check_legacy_iptables, legacy_input_drops

    reject = "-A INPUT -p udp -m udp --dport 8472 -j REJECT --reject-with icmp-port-unreachable"
    save = LEGACY.format(policy="ACCEPT", rules=reject)
    assert legacy_input_drops(save, 8472) == [
        ("-A INPUT -s 198.19.0.0/24 -p udp -m udp --dport 8000:9000 -j DROP", False),
        (reject, True),
    ]
    assert legacy_input_drops(save, 4789) == []  # nat table and tcp rules do not count
    accept_first = LEGACY.format(
        policy="DROP", rules="-A INPUT -p udp -m udp --dport 8472 -j ACCEPT"
    )
    assert legacy_input_drops(accept_first, 8472) == [
        ("-A INPUT -s 198.19.0.0/24 -p udp -m udp --dport 8000:9000 -j DROP", False)
    ]
    assert legacy_input_drops(LEGACY.format(policy="DROP", rules=""), 4789) == [
        (":INPUT DROP (policy)", False)
    ]
    findings = check_legacy_iptables(healthy(iptables_legacy=save))
    assert [f.severity for f in findings] == [Severity.WARNING, Severity.ERROR]
    assert "invisible to nft" in findings[1].message
    assert "iptables-legacy -I INPUT -p udp --dport 8472 -j ACCEPT" in findings[1].fix


def v6_links(v6_mtu: int, cni_mtu: int = 1430) -> dict[str, LinkFacts]:
    out = links(cni_mtu=cni_mtu)
    out["flannel-v6.1"] = LinkFacts("flannel-v6.1", v6_mtu, "vxlan", "eth0", 8472, None)
    return out


def test_dual_stack_mtu_checks_the_v6_device_against_underlay_minus_70():
    env = ENV._replace(mtu=1430)
    assert check_mtu(healthy(links=v6_links(1430), subnet_env=env)) == []
    # Flannel's -50 on the IPv6 tunnel (#1781): large packets are dropped.
    findings = check_mtu(healthy(links=v6_links(1450, cni_mtu=1450), subnet_env=ENV))
    messages = " | ".join(x.message for x in findings)
    assert "flannel-v6.1 MTU 1450 exceeds eth0 MTU 1500 - 70 = 1430" in messages


def test_ipv6_only_node_has_only_the_v6_device():
    only_v6 = {k: v for k, v in v6_links(1430).items() if k != "flannel.1"}
    env = SubnetEnv(None, None, 1430, False)
    assert check_mtu(healthy(links=only_v6, subnet_env=env)) == []


def test_an_ipv6_only_node_has_no_ipv4_findings():
    """IPv6-only: subnet.env carries only the IPv6 pair, every lease advertises 0.0.0.0
    as its PublicIP; neither is a finding, a shared PublicIPv6 still is."""
    from ipaddress import IPv6Address

    env = SubnetEnv(
        None, None, 1430, False, IPv6Network("fd44::/48"), IPv6Network("fd44:0:0:1::/64")
    )
    assert check_subnet_env(healthy(subnet_env=env)) == []
    (f,) = check_subnet_env(healthy(subnet_env=env._replace(ipv6_subnet=None)))
    assert "lacks FLANNEL_IPV6_SUBNET" in f.message

    def v6(n: int, ip: str) -> Lease:
        attrs = LeaseAttrs(IPv4Address("0.0.0.0"), "vxlan", None, IPv6Address(ip))
        return Lease(IPv4Network("0.0.0.0/0"), attrs, NOW + 3600, lease_id=n,
                     ipv6_subnet=IPv6Network(f"fd44:0:0:{n}::/64"))  # fmt: skip

    node = healthy(subnet_env=env)
    assert (
        check_leases(dataclasses.replace(node, leases=[v6(1, "fd18::1"), v6(2, "fd18::2")])) == []
    )
    (f,) = check_leases(dataclasses.replace(node, leases=[v6(1, "fd18::1"), v6(2, "fd18::1")]))
    assert "PublicIPv6 fd18::1 is advertised by 2 leases (fd44:0:0:1::/64, fd44:0:0:2::/64)" in (
        f.message
    )
    (f,) = check_leases(dataclasses.replace(node, leases=[v6(2, "fd18::2")]))
    assert "this node's subnet fd44:0:0:1::/64 (from subnet.env) has no lease" in f.message


def test_status_names_an_ipv6_only_lease_by_its_ipv6_half():
    from flannelish.cli.node import render_status

    doc = {
        "node": "fd18::1",
        "ready": True,
        "lease": {"held": True, "subnet": "0.0.0.0/0", "network": None, "public_ip": "0.0.0.0",
                  "ipv6_subnet": "fd44:0:0:49::/64", "ipv6_network": "fd44::/48",
                  "public_ipv6": "fd18::1", "expiration": None},
    }  # fmt: skip
    (line,) = [x for x in render_status(doc) if x.startswith("[bold]lease ")]
    assert "fd44:0:0:49::/64 of fd44::/48 via fd18::1" in line and "0.0.0.0" not in line
