"""A hand-built two-node VXLAN overlay (what the daemon would program), plus helpers.

    pod1 10.244.1.2 ─ cni0 ─ node1 198.18.0.1 ┐                       ┌ out 198.18.0.200
                                               ├─ underlay br0 ───────┤
    pod2 10.244.2.2 ─ cni0 ─ node2 198.18.0.2 ┘                       └ rogue 198.18.0.99

flannel.1 on each node is configured as docs/flannel-compat.md §7 describes (VNI 1,
nolearning, permanent neigh + FDB + onlink route per peer), so the nft tests
exercise the same kernel paths as the daemon without depending on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

import pytest

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run
from flannelish.testing.underlay import Host, Underlay

NETWORK = IPv4Network("10.244.0.0/16")
VNI = 1
PORT = 8472


@dataclass
class Node:
    host: Host
    subnet: IPv4Network
    mac: str
    pod: str  # pod namespace name

    @property
    def pod_ip(self) -> str:
        return str(self.subnet.network_address + 2)


def build_node(
    factory: NetnsFactory, host: Host, index: int, pod_short: str, vxlan: bool = True
) -> Node:
    subnet = IPv4Network(f"10.244.{index}.0/24")
    node = Node(host, subnet, f"0a:58:0a:f4:0{index}:00", factory.create(pod_short))
    h = host.run
    if not vxlan:
        return build_pod(node, mtu=1500)
    h("ip", "link", "add", "flannel.1", "type", "vxlan", "id", str(VNI), "local", str(host.ip),
      "dev", "eth0", "dstport", str(PORT), "nolearning")  # fmt: skip
    h("ip", "link", "set", "flannel.1", "address", node.mac, "mtu", "1450", "up")
    h("ip", "addr", "add", f"{subnet.network_address}/32", "dev", "flannel.1")
    return build_pod(node, mtu=1450)


def build_pod(node: Node, mtu: int) -> Node:
    """cni0 bridge with the subnet's .1 and one pod (.2) behind a veth."""
    h, subnet = node.host.run, node.subnet
    h("sysctl", "-qw", "net.ipv4.ip_forward=1")
    h("ip", "link", "add", "cni0", "type", "bridge")
    h("ip", "addr", "add", f"{subnet.network_address + 1}/24", "dev", "cni0")
    h("ip", "link", "set", "cni0", "mtu", str(mtu), "up")
    h("ip", "link", "add", "veth0", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
      "mtu", str(mtu), "netns", node.pod)  # fmt: skip
    h("ip", "link", "set", "veth0", "master", "cni0", "up")
    p = ["ip", "-n", node.pod]
    run([*p, "addr", "add", f"{node.pod_ip}/24", "dev", "eth0"])
    run([*p, "link", "set", "eth0", "up"])
    run([*p, "route", "add", "default", "via", str(subnet.network_address + 1)])
    return node


def _peer(node: Node, peer: Node) -> None:
    gw = str(peer.subnet.network_address)
    h = node.host.run
    h("ip", "neigh", "replace", gw, "lladdr", peer.mac, "dev", "flannel.1", "nud", "permanent")
    h("bridge", "fdb", "replace", peer.mac, "dev", "flannel.1", "dst", str(peer.host.ip),
      "self", "permanent")  # fmt: skip
    h("ip", "route", "replace", str(peer.subnet), "via", gw, "dev", "flannel.1", "onlink")


@dataclass
class Overlay:
    underlay: Underlay
    node1: Node
    node2: Node
    rogue: Host
    out: Host


@pytest.fixture
def overlay(netns_factory: NetnsFactory, underlay: Underlay) -> Overlay:
    node1 = build_node(netns_factory, underlay.add_host("n1", 1), 1, "p1")
    node2 = build_node(netns_factory, underlay.add_host("n2", 2), 2, "p2")
    _peer(node1, node2)
    _peer(node2, node1)
    rogue = underlay.add_host("rogue", 99)
    out = underlay.add_host("out", 200)
    return Overlay(underlay, node1, node2, rogue, out)
