"""host-gw in real namespaces: three nodes, plain routes, pods ping with no VXLAN at all."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.hostgw import HostGwBackend

from flannelish.daemon.reconciler import Reconciler
from flannelish.kernel.rawnetlink import RawNetlink
from flannelish.subnet.lease import Lease, LeaseAttrs

from .conftest import build_node
from .ophelpers import ping

NET = SimpleNamespace(network=IPv4Network("10.244.0.0/16"), backend={"Type": "host-gw"})


def lease(node) -> Lease:
    return Lease(node.subnet, LeaseAttrs(node.host.ip, "host-gw"))


def test_three_host_gw_nodes_route_pods_and_skip_an_off_link_peer(
    netns_factory, underlay, tmp_path, caplog
):
    nodes = [
        build_node(netns_factory, underlay.add_host(f"n{i}", i), i, f"p{i}", vxlan=False)
        for i in (1, 2, 3)
    ]
    # A fourth lease whose PublicIP is on another L2 segment.
    far = Lease(IPv4Network("10.244.9.0/24"), LeaseAttrs(IPv4Address("198.19.0.9"), "host-gw"))
    handles = []
    caplog.set_level(logging.WARNING, logger="flannelish.hostgw")
    try:
        for node in nodes:
            nl = RawNetlink(node.host.netns)
            handles.append(nl)
            eth0 = nl.link("eth0")
            assert eth0 is not None
            ext = ExternalInterface("eth0", eth0.index, node.host.ip, node.host.ip, eth0.mtu)
            backend = HostGwBackend(BackendContext(nl, ext, NET, tmp_path))
            backend.setup()
            backend.bind_lease(lease(node))
            peers = [lease(p) for p in nodes if p is not node] + [far]
            result = Reconciler([backend]).reconcile(peers)
            assert (result.errors, result.changes, result.skipped) == (0, 2, 1)
        routes = nodes[0].host.run("ip", "route", "show", "proto", "70").stdout
        assert "10.244.2.0/24 via 198.18.0.2 dev eth0" in routes
        assert "10.244.3.0/24 via 198.18.0.3 dev eth0" in routes
        assert "10.244.9.0" not in routes
        for node in nodes:
            assert "vxlan" not in node.host.run("ip", "-d", "link").stdout
        assert ping(nodes[0].pod, nodes[1].pod_ip)
        assert ping(nodes[2].pod, nodes[0].pod_ip)
        warned = [r.getMessage() for r in caplog.records if r.name == "flannelish.hostgw"]
        assert len(warned) == 3 and all("198.19.0.9 is not on-link on eth0" in w for w in warned)
    finally:
        for nl in handles:
            nl.close()
