"""host-gw through the real daemon: three nodes, pods ping, an off-L2 lease is warned about."""

from __future__ import annotations

import json
import sys
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from flannelish.testing.proc import run

from .conftest import Node, build_pod
from .ophelpers import Daemon, ping, wait_for

pytestmark = pytest.mark.slow  # real daemons: about 10 s per test

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}'


def test_host_gw_daemons_route_pods_without_vxlan(netns_factory, underlay, underlay_etcd, tmp_path):
    underlay_etcd.etcdctl("put", f"{PREFIX}/config", CONFIG)
    far = json.dumps({"PublicIP": "198.19.0.9", "PublicIPv6": None, "BackendType": "host-gw"})
    underlay_etcd.etcdctl("put", f"{PREFIX}/subnets/10.244.250.0-24", far)
    hosts = [underlay.add_host(f"n{i}", i) for i in (1, 2, 3)]
    flags = ("--resync-interval", "1", "--healthz-port", "9912")
    daemons = [Daemon(h.netns, underlay_etcd.client_url, tmp_path / h.name, *flags) for h in hosts]
    try:
        nodes = []
        for i, (host, daemon) in enumerate(zip(hosts, daemons, strict=True)):
            subnet = IPv4Interface(daemon.wait_subnet()).network
            node = Node(host, subnet, "", netns_factory.create(f"p{i}"))
            nodes.append(build_pod(node, mtu=1500))

        def routes_in_place() -> bool:
            for node in nodes:
                out = node.host.run("ip", "-j", "route", "show", "proto", "70").stdout
                got = {r["dst"]: (r.get("gateway"), r["dev"]) for r in json.loads(out or "[]")}
                peers = [n for n in nodes if n is not node]
                if got != {str(p.subnet): (str(p.host.ip), "eth0") for p in peers}:
                    return False
            return True

        # exactly the two on-link peers: no route for the off-L2 lease 10.244.250.0/24
        assert wait_for(routes_in_place, 15), "host-gw routes did not converge"
        for node in nodes:
            assert "vxlan" not in node.host.run("ip", "-d", "link").stdout
        assert ping(nodes[0].pod, nodes[1].pod_ip) and ping(nodes[2].pod, nodes[0].pod_ip)
        # The off-L2 peer is named in a warning, again and again (rate-limited to 30 s).
        assert wait_for(lambda: "198.19.0.9 is not on-link on eth0" in daemons[0].log(), 10)
        # `flannelish status` counts it as skipped; the node is still ready.
        flannelish = str(Path(sys.executable).with_name("flannelish"))
        result = run([flannelish, "status", "--json", "--healthz-port", "9912", "--timeout", "10"],
                     netns=hosts[0].netns, check=False)  # fmt: skip
        doc = json.loads(result.stdout)
        assert result.returncode == 0 and doc["backend"] == "host-gw" and doc["device"] is None
        assert doc["peers"]["programmed"] == 2 and doc["peers"]["skipped_count"] == 1
    finally:
        for daemon in daemons:
            daemon.stop()
