"""NetworkPolicy enforced in real namespaces: Kubernetes' e2e layout and cases, full matrix.

Two nodes (pods a, b of x/y/z on n1, pods c on n2: same-node and cross-node
pairs), one PolicyAgent per node sharing one store (as two daemons share
etcd), real nft, TCP and UDP on ports 80 and 81.  Every case compares the
observed matrix with the model's (flannelish.policy.evaluate).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannelish.kernel.netns import in_netns
from flannelish.kernel.nft import NftCli
from flannelish.policy import cases
from flannelish.policy.agent import PolicyAgent
from flannelish.policy.compile import FAMILY, TABLE
from flannelish.policy.evaluate import World, decide
from flannelish.policy.model import Endpoint
from flannelish.policy.parse import parse_policies
from flannelish.policy.probe import PodServers, probe, probe_matrix
from flannelish.policy.store import PolicyStore
from flannelish.testing.netns import NetnsFactory
from flannelish.testing.policynet import PolicyNet, build
from flannelish.testing.policystore import MemoryStore
from flannelish.testing.proc import run

pytestmark = pytest.mark.slow
PROBES = [(proto, port) for proto in cases.PROTOS for port in cases.PORTS]
PLACEMENT = {
    f"{ns}/{p}": ("n2" if p == "c" else "n1") for ns in cases.NAMESPACES for p in cases.PODS
}


class Cluster:
    def __init__(self, net: PolicyNet, store: PolicyStore, agents: dict[str, PolicyAgent]) -> None:
        self.net, self.store, self.agents = net, store, agents

    def world(self) -> World:
        return self.agents["n1"].view()

    def set_policies(self, docs: list[dict]) -> None:
        wanted = parse_policies(json.dumps(docs)) if docs else []
        world = self.world()
        for p in world.policies:
            if p.key not in {w.key for w in wanted}:
                self.store.delete_policy(p.namespace, p.name)
        for p in wanted:
            self.store.put_policy(p)
        keys = sorted(p.key for p in wanted)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(
                sorted(p.key for p in a.view().policies) == keys
                and a._applied is not None
                and sorted(a._applied.counters.values()) == keys
                for a in self.agents.values()
            ):
                return  # every agent has the policies in its model and in its table
            time.sleep(0.02)
        raise AssertionError("agents did not converge")

    def check(self, family: int = 4) -> list[str]:
        """Every probe whose outcome differs from the model, in one IP family."""
        ips = self.net.ips6 if family == 6 else self.net.ips
        observed = probe_matrix(self.net.pods, ips, PROBES, timeout=0.3)
        world = self.world()
        diffs = []
        for (a, b, proto, port), got in sorted(observed.items()):
            want = decide(world, ips[a], ips[b], proto, port).allowed
            if got != want:
                diffs.append(
                    f"v{family} {a} -> {b} {port}/{proto}: expected {want}, observed {got}"
                )
        return diffs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    factory = NetnsFactory("flp")
    factory.remove_leftovers()
    agents: dict[str, PolicyAgent] = {}
    servers = None
    try:
        net = build(factory, PLACEMENT, br_netfilter=False)  # the agent must turn it on
        mem = MemoryStore()
        store = PolicyStore(mem)  # type: ignore[arg-type]
        for ns in cases.layout_namespaces().values():
            store.put_namespace(ns)
        for node, netns in net.nodes.items():
            state = tmp_path_factory.mktemp(node)
            agent = PolicyAgent(
                PolicyStore(mem),  # type: ignore[arg-type]
                NftCli(netns=netns),
                node,
                Path(state),
                resync_s=1.0,
                netns=netns,
            )
            agent.start()
            agents[node] = agent
        for ep in cases.layout_endpoints(net.ips, net.node_of):  # as the CNI hook does on ADD
            agents[ep.node].register(ep)
        servers = PodServers(net.pods)
        yield Cluster(net, store, agents)
    finally:
        if servers is not None:
            servers.close()
        for agent in agents.values():
            agent.stop()
        factory.cleanup()


def test_no_policy_everything_reachable(cluster: Cluster) -> None:
    cluster.set_policies([])
    assert cluster.check() == []
    for node, netns in cluster.net.nodes.items():
        out = run(
            ["ip", "netns", "exec", netns, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables"]
        )
        assert out.stdout.strip() == "1", node
        assert cluster.agents[node].status()["bridge_hooks"] == "on"


@pytest.mark.parametrize("case", sorted(cases.CASES))
def test_kubernetes_case(cluster: Cluster, case: str) -> None:
    cluster.set_policies(cases.CASES[case])
    assert cluster.check() == []


def test_ipblock_with_except(cluster: Cluster) -> None:
    # node 2's pod subnet except z/c: y/c is allowed into x/a, z/c and node-1 pods are not
    cluster.set_policies(cases.ipblock_case("10.244.2.0/24", [cluster.net.ips["z/c"] + "/32"]))
    world = cluster.world()
    assert decide(world, cluster.net.ips["y/c"], cluster.net.ips["x/a"], "TCP", 80).allowed
    assert not decide(world, cluster.net.ips["z/c"], cluster.net.ips["x/a"], "TCP", 80).allowed
    assert cluster.check() == []


def test_rules_do_not_grow_with_pods_and_drops_are_counted(cluster: Cluster) -> None:
    cluster.set_policies(cases.CASES["default-deny-ingress"])
    agent = cluster.agents["n1"]
    before = agent.status()
    assert not probe(cluster.net.pods["y/a"], cluster.net.ips["x/a"], "TCP", 80, 0.3)
    agent.check()
    status = agent.status()
    assert status["drops"].get("x/deny-in", 0) >= 1
    assert status["repairs"] == before["repairs"]  # the drift check finds the table intact
    listing = NftCli(netns=cluster.net.nodes["n1"]).listing("table", FAMILY, TABLE) or []
    assert sum(1 for i in listing if "rule" in i) == status["rules"]


def test_changes_are_incremental_and_match_a_fresh_table(cluster: Cluster) -> None:
    from flannelish.policy.compile import render

    agent = cluster.agents["n1"]
    full = agent.stats.full_rewrites
    cluster.set_policies(cases.CASES["allow-all-ingress"] + cases.CASES["egress-to-one-namespace"])
    cluster.set_policies(cases.CASES["ns-and-pod-one-peer"])
    assert agent.stats.full_rewrites == full  # policy changes went in as deltas
    assert agent.check()  # and the kernel's table is what was applied
    nft = NftCli(netns=cluster.net.nodes["n1"])
    incremental = nft.listing("table", FAMILY, TABLE) or []
    assert agent._applied is not None
    nft.run(render(agent._applied))
    fresh = nft.listing("table", FAMILY, TABLE) or []

    def shape(items: list[dict]) -> list:
        out = []
        for i in items:
            if "rule" in i:
                out.append(
                    ("rule", i["rule"]["chain"], json.dumps(i["rule"]["expr"], sort_keys=True))
                )
            elif "set" in i:
                out.append(
                    ("set", i["set"]["name"], json.dumps(i["set"].get("elem", []), sort_keys=True))
                )
            elif "chain" in i:
                out.append(("chain", i["chain"]["name"]))
        return sorted(out)

    assert shape(incremental) == shape(fresh)


def test_table_deleted_is_repaired(cluster: Cluster) -> None:
    cluster.set_policies(cases.CASES["default-deny-ingress"])
    NftCli(netns=cluster.net.nodes["n1"]).run(f"delete table {FAMILY} {TABLE}\n")
    assert probe(cluster.net.pods["y/a"], cluster.net.ips["x/a"], "TCP", 80, 0.3)  # open now
    assert not cluster.agents["n1"].check()  # repaired
    assert not probe(cluster.net.pods["y/a"], cluster.net.ips["x/a"], "TCP", 80, 0.3)


def test_policy_added_and_removed_while_traffic_runs(cluster: Cluster) -> None:
    cluster.set_policies([])
    net = cluster.net
    with in_netns(net.pods["y/c"]):  # cross-node: y/c on n2 -> x/a on n1
        conn = socket.create_connection((net.ips["x/a"], 80), timeout=1)
    try:
        cluster.set_policies(cases.CASES["default-deny-ingress"])
        # the accepted connection is established: its packets keep passing (conntrack)
        conn.sendall(b"still here")
        assert not probe(net.pods["y/c"], net.ips["x/a"], "TCP", 80, 0.3)  # new ones do not
        assert cluster.check() == []
        cluster.set_policies([])
        assert probe(net.pods["y/c"], net.ips["x/a"], "TCP", 80, 0.5)
    finally:
        conn.close()


def test_new_pod_under_policy_is_protected_when_register_returns(cluster: Cluster) -> None:
    cluster.set_policies(cases.CASES["default-deny-ingress"])
    agent = cluster.agents["n1"]
    # x/a re-registered with another label: still selected by podSelector {} at once
    ep = next(e for e in agent.view().endpoints if e.namespace == "x" and e.name == "a")
    agent.register(
        Endpoint(ep.container_id, ep.node, ep.ips, "x", "a", (("pod", "a"), ("new", "1")))
    )
    assert not probe(cluster.net.pods["y/a"], cluster.net.ips["x/a"], "TCP", 80, 0.3)
    agent.register(ep)
