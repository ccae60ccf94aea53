"""Node operations end to end through real daemons: ip-masq, table repair and removal,
status and readiness across an etcd outage, metrics, and the VXLAN anti-spoof rule (scapy)."""

from __future__ import annotations

import json
import sys
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannelish.testing.proc import run

from .conftest import Node, build_pod
from .ophelpers import Daemon, UdpReceiver, ping, send_spoofed_vxlan, send_udp, wait_for

pytestmark = pytest.mark.slow  # real daemons: about 10 s per test

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
HEALTH_PORT = "9911"
FLANNELISH = str(Path(sys.executable).with_name("flannelish"))


def start_nodes(netns_factory, underlay, etcd, tmp_path, *flags):
    etcd.etcdctl("put", f"{PREFIX}/config", CONFIG)
    hosts = [underlay.add_host(f"n{i}", i) for i in (1, 2)]
    daemons = [
        Daemon(h.netns, etcd.client_url, tmp_path / h.name, "--resync-interval", "1", *flags)
        for h in hosts
    ]
    nodes = []
    for i, (host, daemon) in enumerate(zip(hosts, daemons, strict=True)):
        subnet = IPv4Interface(daemon.wait_subnet()).network
        nodes.append(build_pod(Node(host, subnet, "", netns_factory.create(f"p{i}")), mtu=1450))
    return nodes, daemons


def status(netns: str) -> tuple[int, dict]:
    result = run([FLANNELISH, "status", "--json", "--healthz-port", HEALTH_PORT,
                  "--timeout", "10"], netns=netns, check=False)  # fmt: skip
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def table(netns: str) -> str:
    return run(["nft", "list", "ruleset"], netns=netns).stdout


def test_daemon_ip_masq_repair_removal_status_and_readiness(
    netns_factory, underlay, underlay_etcd, tmp_path
):
    nodes, daemons = start_nodes(
        netns_factory, underlay, underlay_etcd, tmp_path, "--ip-masq",
        "--healthz-ip", "127.0.0.1", "--healthz-port", HEALTH_PORT,
    )  # fmt: skip
    n1, n2 = nodes
    out = underlay.add_host("out", 200)
    try:
        assert wait_for(lambda: ping(n1.pod, n2.pod_ip, count=1), 15)
        outside, pod2 = UdpReceiver(out.netns), UdpReceiver(n2.pod)
        try:
            send_udp(n1.pod, str(out.ip), "to-world")
            send_udp(n1.pod, n2.pod_ip, "to-pod")
            assert outside.lines() == [f"{n1.host.ip} to-world"]  # masqueraded
            assert pod2.lines() == [f"{n1.pod_ip} to-pod"]  # no NAT between pods
        finally:
            outside.stop()
            pod2.stop()

        assert wait_for(lambda: status(n1.host.netns)[0] == 0, 30), status(n1.host.netns)
        doc = status(n1.host.netns)[1]
        assert doc["ready"] and doc["lease"]["subnet"] == str(n1.subnet)
        assert doc["peers"]["programmed"] == 1 and doc["backend"] == "vxlan"
        metrics = run([sys.executable, "-c", "import urllib.request as u; print(u.urlopen("
                       f"'http://127.0.0.1:{HEALTH_PORT}/metrics').read().decode())"],
                      netns=n1.host.netns).stdout  # fmt: skip
        names = {f.name for f in text_string_to_metric_families(metrics)}
        assert {"flannelish_reconcile_runs", "flannelish_peers", "flannelish_ready"} <= names

        # Deleted by hand -> restored within one resync (1 s here).
        run(["nft", "delete", "table", "ip", "flannelish"], netns=n1.host.netns)
        assert wait_for(lambda: "masquerade fully-random" in table(n1.host.netns), 5)

        # etcd gone -> not ready (exit 1); back -> ready; the data path never stops.
        underlay_etcd.stop()
        assert wait_for(lambda: status(n1.host.netns)[0] == 1, 30), daemons[0].log()[-3000:]
        etcd_check = next(c for c in status(n1.host.netns)[1]["checks"] if c["name"] == "etcd")
        assert not etcd_check["ok"]
        assert ping(n1.pod, n2.pod_ip)
        underlay_etcd.start()
        underlay_etcd.wait_healthy()
        assert wait_for(lambda: status(n1.host.netns)[0] == 0, 30), daemons[0].log()[-3000:]

        daemons[0].stop()  # clean shutdown: the overlay and its protection both stay
        kept = table(n1.host.netns)
        assert "masquerade fully-random" in kept and "@vxlan_peers" in kept
        assert ping(n2.pod, n1.pod_ip)
    finally:
        for daemon in daemons:
            daemon.stop()


def test_restart_adopts_the_armed_table_and_uninstall_removes_everything(
    netns_factory, underlay, underlay_etcd, tmp_path
):
    nodes, daemons = start_nodes(netns_factory, underlay, underlay_etcd, tmp_path)
    n1, n2 = nodes
    ns = n1.host.netns
    try:
        assert wait_for(lambda: "@vxlan_peers" in table(ns), 15)  # armed
        daemons[0].stop()
        assert "@vxlan_peers" in table(ns) and str(n2.host.ip) in table(ns)
        restarted = Daemon(ns, underlay_etcd.client_url, tmp_path / "n1", "--resync-interval", "1")
        daemons.append(restarted)
        assert wait_for(lambda: "adopted the armed nftables table" in restarted.log(), 15)
        # Never unarmed: the drop rule and the peer were there the whole time.
        assert "@vxlan_peers" in table(ns) and str(n2.host.ip) in table(ns)
        assert wait_for(lambda: ping(n1.pod, n2.pod_ip, count=1), 10)
        restarted.stop()

        # A route that is not ours survives the uninstall.
        run(["ip", "route", "add", "203.0.113.0/24", "via", str(underlay.gateway)], netns=ns)
        # Nexthops on the external interface (DirectRouting's) do not go with the device:
        # ours (protocol 70) are removed, a foreign one stays.
        gw = str(underlay.gateway)
        run(["ip", "nexthop", "add", "id", "1073741900", "via", gw, "dev", "eth0", "proto", "70"],
            netns=ns)  # fmt: skip
        run(["ip", "nexthop", "add", "id", "7", "via", gw, "dev", "eth0"], netns=ns)
        dry = run([FLANNELISH, "uninstall", "--dry-run"], netns=ns).stdout
        assert "would remove device flannel.1" in dry and "ip flannelish" in dry
        assert f"would remove nexthop id 1073741900 via {gw}" in dry and "id 7 " not in dry
        assert "flannel.1" in run(["ip", "link"], netns=ns).stdout  # a dry run changes nothing
        run([FLANNELISH, "uninstall", "--yes"], netns=ns)
        assert "flannel.1" not in run(["ip", "link"], netns=ns).stdout
        assert "flannelish" not in table(ns)
        routes = run(["ip", "route"], netns=ns).stdout
        assert "proto 70" not in routes and "203.0.113.0/24" in routes
        nexthops = run(["ip", "nexthop"], netns=ns).stdout
        assert "id 1073741900" not in nexthops and f"id 7 via {gw} dev eth0" in nexthops
        assert "nothing of flannelish's" in run([FLANNELISH, "uninstall", "--yes"], netns=ns).stdout
    finally:
        for daemon in daemons:
            daemon.stop()


@pytest.mark.parametrize("allow_any", [False, True], ids=["default", "vxlan-allow-any"])
def test_daemon_drops_spoofed_vxlan_unless_allow_any(
    netns_factory, underlay, underlay_etcd, tmp_path, allow_any
):
    flags = ["--vxlan-allow-any"] if allow_any else []
    nodes, daemons = start_nodes(netns_factory, underlay, underlay_etcd, tmp_path, *flags)
    n1, n2 = nodes
    rogue = underlay.add_host("rogue", 99)
    try:
        assert wait_for(lambda: ping(n1.pod, n2.pod_ip, count=1), 15)
        if not allow_any:  # armed once the peer set is complete
            assert wait_for(lambda: "@vxlan_peers" in table(n2.host.netns), 10)
        mac = json.loads(n2.host.run("ip", "-j", "link", "show", "flannel.1").stdout)[0]["address"]
        receiver = UdpReceiver(n2.pod, idle=3.0)
        try:
            inner_src = str(n1.subnet.network_address + 66)  # routable back, so rp_filter is moot
            send_spoofed_vxlan(rogue.netns, n2.host.ip, mac, n2.pod_ip, inner_src=inner_src)
            send_udp(n1.pod, n2.pod_ip, "from-peer")
            seen = receiver.lines()
        finally:
            receiver.stop()
        assert f"{n1.pod_ip} from-peer" in seen
        spoofed = [line for line in seen if line.endswith("spoofed")]
        assert bool(spoofed) is allow_any, seen
    finally:
        for daemon in daemons:
            daemon.stop()
