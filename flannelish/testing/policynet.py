"""A two-node pod network in namespaces for the network-policy tests and benchmarks.

Nodes are namespaces with a bridge ``cni0`` (10.244.<n>.1/24) and IP
forwarding, joined by a veth "underlay" (198.18.0.<n>/24) with a route to
each other's pod subnet (host-gw style: cross-node traffic is routed through
both nodes' forward hooks, as the overlay's is).  Pods are namespaces with a
veth on their node's bridge.  The Kubernetes e2e layout puts pods a and b of
namespaces x, y, z on node 1 and pod c on node 2: same-node and cross-node pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run


@dataclass
class PolicyNet:
    nodes: dict[str, str] = field(default_factory=dict)  # node name -> netns
    pods: dict[str, str] = field(default_factory=dict)  # "x/a" -> netns
    ips: dict[str, str] = field(default_factory=dict)  # "x/a" -> address
    node_of: dict[str, str] = field(default_factory=dict)  # "x/a" -> node name


def build(factory: NetnsFactory, placement: dict[str, str], br_netfilter: bool = True) -> PolicyNet:
    """`placement`: pod key ("x/a") -> node name ("n1" or "n2")."""
    net = PolicyNet()
    names = sorted(set(placement.values()))
    for i, node in enumerate(names, start=1):
        ns = factory.create(node)
        net.nodes[node] = ns
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        run(["ip", "-n", ns, "link", "add", "cni0", "type", "bridge"])
        run(["ip", "-n", ns, "addr", "add", f"10.244.{i}.1/24", "dev", "cni0"])
        run(["ip", "-n", ns, "link", "set", "cni0", "up"])
        value = "1" if br_netfilter else "0"
        run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                f"net.bridge.bridge-nf-call-iptables={value}",
            ]
        )
    if len(names) == 2:
        a, b = (net.nodes[n] for n in names)
        run(
            [
                "ip",
                "link",
                "add",
                "ul",
                "netns",
                a,
                "type",
                "veth",
                "peer",
                "name",
                "ul",
                "netns",
                b,
            ]
        )
        for j, ns in enumerate((a, b), start=1):
            run(["ip", "-n", ns, "addr", "add", f"198.18.0.{j}/24", "dev", "ul"])
            run(["ip", "-n", ns, "link", "set", "ul", "up"])
            other = 3 - j
            run(
                ["ip", "-n", ns, "route", "add", f"10.244.{other}.0/24", "via", f"198.18.0.{other}"]
            )
    host = {n: 2 for n in names}
    for k, (pod, node) in enumerate(sorted(placement.items())):
        i = names.index(node) + 1
        ns = factory.create(pod.replace("/", "-"))
        ip = f"10.244.{i}.{host[node]}"
        host[node] += 1
        veth = f"vp{k}"
        run(
            [
                "ip",
                "link",
                "add",
                veth,
                "netns",
                net.nodes[node],
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]
        )
        run(["ip", "-n", net.nodes[node], "link", "set", veth, "master", "cni0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "route", "add", "default", "via", f"10.244.{i}.1"])
        net.pods[pod], net.ips[pod], net.node_of[pod] = ns, ip, node
    return net
