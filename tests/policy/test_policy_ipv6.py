"""NetworkPolicy on IPv6: dual-stack pods, same-node and cross-node, in real namespaces.

Pods x/a and x/b on n1, x/c and y/c on n2, each with an IPv4 and an IPv6
address (flannelish.testing.policynet with ipv6=True); one PolicyAgent per
node with real nft.  Each case checks the full matrix on both families
against the model: the ip6 sets and rules of the inet table must enforce what
the ip ones do, and an IPv6 ipBlock only IPv6.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flannelish.kernel.nftlib import nft_runner
from flannelish.policy.agent import PolicyAgent
from flannelish.policy.cases import layout_namespaces
from flannelish.policy.model import Endpoint
from flannelish.policy.probe import PodServers, probe
from flannelish.policy.store import PolicyStore
from flannelish.testing.netns import NetnsFactory
from flannelish.testing.policynet import build
from flannelish.testing.policystore import MemoryStore
from flannelish.testing.proc import run

from .test_policy_netns import Cluster

pytestmark = pytest.mark.slow
PLACEMENT = {"x/a": "n1", "x/b": "n1", "x/c": "n2", "y/c": "n2"}
PROBES = [("TCP", 80), ("UDP", 80), ("TCP", 81)]


def _np(name: str, ns: str, spec: dict) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def net6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    factory = NetnsFactory("flpsix")
    factory.remove_leftovers()
    agents: dict[str, PolicyAgent] = {}
    servers = None
    try:
        net = build(factory, PLACEMENT, br_netfilter=False, ipv6=True)
        mem = MemoryStore()
        store = PolicyStore(mem)  # type: ignore[arg-type]
        for ns in layout_namespaces().values():
            store.put_namespace(ns)
        for node, netns in net.nodes.items():
            agent = PolicyAgent(
                PolicyStore(mem),  # type: ignore[arg-type]
                nft_runner(netns),
                node,
                Path(tmp_path_factory.mktemp(node)),
                resync_s=1.0,
                netns=netns,
            )
            agent.start()
            agents[node] = agent
        for pod, node in PLACEMENT.items():
            ns, name = pod.split("/")
            agents[node].register(
                Endpoint(
                    f"cid-{ns}-{name}",
                    node,
                    (net.ips[pod], net.ips6[pod]),
                    ns,
                    name,
                    (("pod", name),),
                )
            )
        servers = PodServers(net.pods, ipv6=True)
        yield Cluster(net, store, agents)
    finally:
        if servers is not None:
            servers.close()
        for agent in agents.values():
            agent.stop()
        factory.cleanup()


def test_ipv6_reachable_without_policy_and_bridge_hooks_on(net6: Cluster) -> None:
    net6.set_policies([])
    assert net6.check(6) == [] and net6.check(4) == []
    assert probe(net6.net.pods["x/b"], net6.net.ips6["x/a"], "TCP", 80)  # the probes do reach
    for netns in net6.net.nodes.values():
        out = run(
            ["ip", "netns", "exec", netns, "sysctl", "-n", "net.bridge.bridge-nf-call-ip6tables"]
        )
        assert out.stdout.strip() == "1"


def test_ipv6_deny_then_allow_from_a_pod_same_node_and_cross_node(net6: Cluster) -> None:
    pods, ips6 = net6.net.pods, net6.net.ips6
    net6.set_policies([_np("deny-in", "x", {"podSelector": {}, "policyTypes": ["Ingress"]})])
    assert not probe(pods["x/b"], ips6["x/a"], "TCP", 80, 0.3)  # same node
    assert not probe(pods["y/c"], ips6["x/a"], "TCP", 80, 0.3)  # cross node
    assert net6.check(6) == [] and net6.check(4) == []
    allow_c = _np(
        "allow-c",
        "x",
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}
                    ],
                    "ports": [{"port": 80}],
                }
            ],
        },
    )
    net6.set_policies(
        [_np("deny-in", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}), allow_c]
    )
    assert probe(pods["y/c"], ips6["x/a"], "TCP", 80, 0.5)  # cross node, allowed
    assert not probe(pods["y/c"], ips6["x/a"], "TCP", 81, 0.3)  # other port
    assert not probe(pods["x/b"], ips6["x/a"], "TCP", 80, 0.3)  # same node, not a c
    assert net6.check(6) == [] and net6.check(4) == []


def test_ipv6_ipblock_with_except_and_egress(net6: Cluster) -> None:
    pods, ips6, ips = net6.net.pods, net6.net.ips6, net6.net.ips
    # x/a may send only to node 2's IPv6 pod subnet except y/c (and to no IPv4 address)
    block = {"cidr": "fd44:0:0:2::/64", "except": [ips6["y/c"] + "/128"]}
    net6.set_policies(
        [
            _np(
                "egress-v6-block",
                "x",
                {
                    "podSelector": {"matchLabels": {"pod": "a"}},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": block}]}],
                },
            )
        ]
    )
    assert probe(pods["x/a"], ips6["x/c"], "TCP", 80, 0.5)  # cross node, in the block
    assert not probe(pods["x/a"], ips6["y/c"], "TCP", 80, 0.3)  # the except
    assert not probe(pods["x/a"], ips6["x/b"], "TCP", 80, 0.3)  # same node, outside it
    assert not probe(pods["x/a"], ips["x/c"], "TCP", 80, 0.3)  # IPv4: no block of its family
    assert net6.check(6) == [] and net6.check(4) == []
    drops = net6.agents["n1"].status()["drops"]
    assert drops.get("x/egress-v6-block", 0) >= 1


def test_status_metrics_and_doctor_report_policy(net6: Cluster) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from flannelish.cli.node import render_status
    from flannelish.kernel.nft import NftCli
    from flannelish.node.policy_checks import summary
    from flannelish.policy.daemon import _Collector

    pods, ips6 = net6.net.pods, net6.net.ips6
    net6.set_policies([_np("deny-in", "x", {"podSelector": {}, "policyTypes": ["Ingress"]})])
    assert not probe(pods["y/c"], ips6["x/a"], "TCP", 80, 0.3)
    agent = net6.agents["n1"]
    status = agent.status()  # counters are read fresh, not at the last resync
    assert status["policies"] == 1 and status["endpoints"] == len(PLACEMENT)
    assert status["local_endpoints"] == 2 and status["applied"]
    assert status["drops"]["x/deny-in"] >= 1
    assert status["largest_set"] >= 2 and status["set_elements"] >= 4  # x/a, x/b on both families
    registry = CollectorRegistry()
    registry.register(_Collector(agent))
    text = generate_latest(registry).decode()
    assert "flannelish_policy_policies 1.0" in text
    assert f"flannelish_policy_endpoints {float(len(PLACEMENT))}" in text
    assert f"flannelish_policy_set_elements {float(status['set_elements'])}" in text
    assert 'flannelish_policy_dropped_packets_total{policy="x/deny-in"}' in text
    lines = "\n".join(render_status({"policy": agent.status()}))
    assert "enforced" in lines and "1 policies" in lines and "x/deny-in" in lines
    ruleset = NftCli(netns=net6.net.nodes["n1"]).listing("ruleset") or []
    doctor = summary(ruleset)
    assert doctor.startswith("network policy enforced: 1 policies") and "x/deny-in" in doctor
