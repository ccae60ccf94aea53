"""A two-node pod network in namespaces for the network-policy tests and benchmarks.

Nodes are namespaces with a bridge ``cni0`` (10.244.<n>.1/24) and IP
forwarding, joined by a veth "underlay" (198.18.0.<n>/24) with a route to
each other's pod subnet (host-gw style: cross-node traffic is routed through
both nodes' forward hooks, as the overlay's is).  Pods are namespaces with a
veth on their node's bridge.  The Kubernetes e2e layout puts pods a and b of
namespaces x, y, z on node 1 and pod c on node 2: same-node and cross-node pairs.
With ``ipv6`` the network is dual-stack: pods also get fd44:0:0:<n>::<k>/64,
the underlay fd18::<n>/64.
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
    ips6: dict[str, str] = field(default_factory=dict)  # "x/a" -> IPv6 address (ipv6=True)


def build(
    factory: NetnsFactory,
    placement: dict[str, str],
    br_netfilter: bool = True,
    ipv6: bool = False,
) -> PolicyNet:
    """`placement`: pod key ("x/a") -> node name ("n1" or "n2")."""
    net = PolicyNet()
    names = sorted(set(placement.values()))
    for i, node in enumerate(names, start=1):
        ns = factory.create(node)
        net.nodes[node] = ns
        if ipv6:
            _no_dad(ns)
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        run(["ip", "-n", ns, "link", "add", "cni0", "type", "bridge"])
        run(["ip", "-n", ns, "addr", "add", f"10.244.{i}.1/24", "dev", "cni0"])
        run(["ip", "-n", ns, "link", "set", "cni0", "up"])
        if ipv6:
            run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
            run(["ip", "-n", ns, "addr", "add", f"fd44:0:0:{i}::1/64", "dev", "cni0", "nodad"])
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
            if ipv6:
                run(["ip", "-n", ns, "addr", "add", f"fd18::{j}/64", "dev", "ul", "nodad"])
                run(
                    [
                        "ip",
                        "-n",
                        ns,
                        "route",
                        "add",
                        f"fd44:0:0:{other}::/64",
                        "via",
                        f"fd18::{other}",
                    ]
                )
    host = {n: 2 for n in names}
    for k, (pod, node) in enumerate(sorted(placement.items())):
        i = names.index(node) + 1
        ns = factory.create(pod.replace("/", "-"))
        if ipv6:
            _no_dad(ns)
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
        if ipv6:
            ip6 = f"fd44:0:0:{i}::{host[node] - 1}"
            run(["ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad"])
            run(["ip", "-n", ns, "-6", "route", "add", "default", "via", f"fd44:0:0:{i}::1"])
            net.ips6[pod] = ip6
        net.pods[pod], net.ips[pod], net.node_of[pod] = ns, ip, node
    return net


def _no_dad(ns: str) -> None:
    # link-local addresses usable at once: a tentative one delays the first
    # neighbour discovery past a probe's timeout
    for conf in ("all", "default"):
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0"])
