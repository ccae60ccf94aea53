"""Benchmark: network policy (flannelish.policy).

1. compile: 100 policies x 1000 endpoints compiled in < 1 s, and the ruleset
   O(policies): the rule count with 1000 endpoints equals the one with 10.
2. convergence: 3 nodes (namespaces, one PolicyAgent each, real nft), one real
   etcd on loopback, 300 endpoints; a policy put into etcd (as `flannelish policy
   apply` on one node does) -> the nft transaction that enforces it completed on
   every node.  Goal: p99 < 1 s.
3. throughput: iperf3 between pods (same node and cross node) with no policy
   and with 100 policies in force selecting both pods, measured alternately in
   the same run.  Goal: with policies >= 0.95x without.  ``throughput`` is
   namespaces with a bridge and routes and PolicyAgents; ``throughput-lab`` is
   the real path: `flannelish lab up --pods e2e` (daemons with --policy, pods
   attached by the CNI plugin, VXLAN between nodes), policies through
   `flannelish policy apply`, removed with etcdctl; it owns the lab while it runs.

Run as root: ``.venv/bin/python bench/policy.py [--changes 50]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flannelish.kernel.nftlib import nft_runner
from flannelish.policy import cases
from flannelish.policy.agent import PolicyAgent
from flannelish.policy.compile import compile_policies, render
from flannelish.policy.model import Endpoint
from flannelish.policy.parse import parse_policies
from flannelish.policy.store import PolicyStore
from flannelish.testing.netns import NetnsFactory
from flannelish.testing.policynet import build


def policy_docs(n: int, ns: str = "x") -> list[dict]:
    docs = []
    for i in range(n):
        docs.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": f"p{i}", "namespace": ns},
                "spec": {
                    "podSelector": {"matchLabels": {"app": f"a{i % 10}"}} if i % 4 else {},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [
                        {
                            "from": [
                                {"podSelector": {"matchLabels": {"tier": f"t{i % 7}"}}},
                                {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                            ],
                            "ports": [
                                {"port": 80 + i % 5},
                                {"port": 5000, "endPort": 5100, "protocol": "UDP"},
                            ],
                        },
                        {
                            "from": [
                                {"ipBlock": {"cidr": "10.0.0.0/8", "except": [f"10.{i}.0.0/16"]}}
                            ]
                        },
                    ],
                    "egress": [{"to": [{"namespaceSelector": {}}]}],
                },
            }
        )
    return docs


def endpoints(n: int, nodes: list[str]) -> list[Endpoint]:
    return [
        Endpoint(
            f"c{i}",
            nodes[i % len(nodes)],
            (f"10.{100 + i // 250}.{i % 250}.{1 + i % 200}",),
            ("x", "y", "z")[i % 3],
            f"pod{i}",
            (("app", f"a{i % 10}"), ("tier", f"t{i % 7}")),
        )
        for i in range(n)
    ]


def bench_compile() -> dict:
    policies = parse_policies(json.dumps(policy_docs(100)))
    ns = cases.layout_namespaces()
    small = compile_policies(policies, endpoints(10, ["n1"]), ns, "n1")
    eps = endpoints(1000, ["n1"])
    times = []
    for _ in range(5):
        t = time.perf_counter()
        big = compile_policies(policies, eps, ns, "n1")
        script = render(big)
        times.append(time.perf_counter() - t)
    return {
        "compile_100x1000_s_median": round(statistics.median(times), 3),
        "compile_100x1000_s_max": round(max(times), 3),
        "rules_10_endpoints": len(small.rules),
        "rules_1000_endpoints": len(big.rules),
        "set_elements_1000": sum(len(e) for e in big.elements.values()),
        "script_bytes": len(script),
        "ok": max(times) < 1.0 and len(big.rules) == len(small.rules),
    }


def bench_convergence(changes: int) -> dict:
    from flannelish.subnet.etcdoptions import EtcdOptions
    from flannelish.subnet.etcdstore import EtcdStore
    from flannelish.testing.etcd import start_etcd

    factory = NetnsFactory("flb")
    factory.remove_leftovers()
    member = start_etcd("policy-bench")
    agents: list[PolicyAgent] = []
    stores: list[EtcdStore] = []
    try:
        nodes = [factory.create(f"n{i}") for i in range(1, 4)]
        opts = EtcdOptions(endpoints=[member.client_url])
        admin = PolicyStore(EtcdStore(opts))
        stores.append(admin.store)
        for ns in cases.layout_namespaces().values():
            admin.put_namespace(ns)
        for ep in endpoints(300, nodes):
            admin.put_endpoint(ep)
        tmp = Path(tempfile.mkdtemp(prefix="flpolicy-bench-"))
        for node in nodes:
            store = EtcdStore(opts)
            stores.append(store)
            agent = PolicyAgent(PolicyStore(store), nft_runner(node), node, tmp, netns=node)
            agent.start()
            agents.append(agent)
        docs = policy_docs(changes)
        latencies, commits = [], []
        for doc in docs:
            policy = parse_policies(json.dumps(doc))[0]
            t0 = time.perf_counter()
            admin.put_policy(policy)
            commits.append(time.perf_counter() - t0)  # etcd's share (its fsync included)
            pending = set(range(len(agents)))
            while pending:
                for i in list(pending):
                    applied = agents[i]._applied
                    if applied is not None and any(
                        v == policy.key for v in applied.counters.values()
                    ):
                        pending.discard(i)
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError("no convergence within 30 s")
                time.sleep(0.001)
            latencies.append(time.perf_counter() - t0)
        latencies.sort()
        commits.sort()
        p99 = _p99(latencies)
        return {
            "changes": len(latencies),
            "endpoints": 300,
            "nodes": 3,
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
            "max_ms": round(latencies[-1] * 1000, 1),
            "etcd_put_p50_ms": round(statistics.median(commits) * 1000, 1),
            "etcd_put_p99_ms": round(_p99(commits) * 1000, 1),
            "rules_per_node_at_end": len(agents[0]._applied.rules) if agents[0]._applied else 0,
            "ok": p99 < 1.0,
        }
    finally:
        for agent in agents:
            agent.stop()
        for store in stores:
            store.close()
        member.destroy()
        factory.cleanup()


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def _iperf(client_ns: str, server_ip: str, seconds: float) -> float:
    out = subprocess.run(
        ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-t", str(seconds), "-J"],
        capture_output=True,
        text=True,
        timeout=seconds + 20,
        check=True,
    ).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def bench_throughput(rounds: int, seconds: float) -> dict:
    factory = NetnsFactory("flb")
    servers: list[subprocess.Popen] = []
    agents: list[PolicyAgent] = []
    try:
        placement = {"x/a": "n1", "x/b": "n1", "x/c": "n2"}
        net = build(factory, placement, br_netfilter=True)
        for pod in ("x/b", "x/c"):
            servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", net.pods[pod], "iperf3", "-s"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)
        from flannelish.testing.policystore import MemoryStore

        mem = MemoryStore()
        tmp = Path(tempfile.mkdtemp(prefix="flpolicy-bench-"))
        for node, ns in net.nodes.items():
            agent = PolicyAgent(PolicyStore(mem), nft_runner(ns), node, tmp, netns=ns)  # type: ignore[arg-type]
            agent.start()
            agents.append(agent)
        by_node = {n: a for n, a in zip(net.nodes, agents, strict=True)}
        for pod, node in placement.items():
            ns, name = pod.split("/")
            by_node[node].register(
                Endpoint(
                    f"c-{name}", node, (net.ips[pod],), ns, name, (("app", "a0"), ("tier", "t0"))
                )
            )
        admin = PolicyStore(mem)  # type: ignore[arg-type]
        docs = _iperf_docs()  # 100 policies selecting the pods; one allows iperf3
        policies = parse_policies(json.dumps(docs))
        results: dict[str, dict[str, list[float]]] = {
            "same-node": {"off": [], "on": []},
            "cross-node": {"off": [], "on": []},
        }
        rules_on = 0
        for r in range(rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):  # no order bias
                for p in policies:
                    if mode == "on":
                        admin.put_policy(p)
                    else:
                        admin.delete_policy(p.namespace, p.name)
                deadline = time.monotonic() + 10
                want = len(policies) if mode == "on" else 0
                while (
                    any(len(a.view().policies) != want for a in agents)
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.05)
                time.sleep(0.3)
                if mode == "on" and agents[0]._applied is not None:
                    rules_on = len(agents[0]._applied.rules)
                results["same-node"][mode].append(_iperf(net.pods["x/a"], net.ips["x/b"], seconds))
                results["cross-node"][mode].append(_iperf(net.pods["x/a"], net.ips["x/c"], seconds))
        return _throughput_report(results, rules_on)
    finally:
        for agent in agents:
            agent.stop()
        for s in servers:
            s.terminate()
            s.wait(timeout=5)
        factory.cleanup()


def _throughput_report(results: dict[str, dict[str, list[float]]], rules_on: int) -> dict:
    out: dict = {"rules_with_100_policies": rules_on}
    ok = True
    for path, r in results.items():
        off, on = statistics.median(r["off"]), statistics.median(r["on"])
        # each round measures both modes back to back: its ratio is paired against
        # the machine's load at that moment, which swings 2-3x on a shared machine
        paired = statistics.median(a / b for a, b in zip(r["on"], r["off"], strict=True))
        out[path] = {
            "without_gbps": round(off, 2),
            "with_100_policies_gbps": round(on, 2),
            "ratio_of_medians": round(on / off, 3),
            "ratio_paired_median": round(paired, 3),
            "runs_without": [round(x, 2) for x in r["off"]],
            "runs_with": [round(x, 2) for x in r["on"]],
        }
        ok = ok and paired >= 0.95
    out["ok"] = ok
    return out


def _iperf_docs() -> list[dict]:
    """99 policies selecting the x pods plus one allowing iperf3 (tcp 5201) into them."""
    return [
        *policy_docs(99),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "iperf", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 5201}]}]},
        },
    ]


def bench_throughput_lab(rounds: int, seconds: float) -> dict:
    from flannelish.lab.names import DEFAULT_STATE_ROOT, lab_dir
    from flannelish.lab.nodeapi import all_status
    from flannelish.lab.state import load_state

    exe = str(Path(sys.executable).with_name("flannelish"))
    name = "polbench"
    up = ["lab", "up", "--name", name, "--nodes", "2", "--pods-per-node", "0", "--pods", "e2e"]
    subprocess.run(
        [exe, *up],
        check=True,
        capture_output=True,
        timeout=600,
    )
    servers: list[subprocess.Popen] = []
    try:
        state = load_state(lab_dir(DEFAULT_STATE_ROOT, name))
        assert state is not None
        pods = {f"{p.namespace}/{p.pod_name}": p for p in state.pods if p.attached}
        a = pods["x/a"]
        xs = [p for k, p in pods.items() if k.startswith("x/") and p is not a]
        same = next(p for p in xs if p.node == a.node)
        cross = next(p for p in xs if p.node != a.node)
        for p in (same, cross):
            servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", p.netns, "iperf3", "-s"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        docs = _iperf_docs()
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(docs, fh)
        etcd = ["--etcd-endpoints", state.etcd_endpoint]

        def converge(want: int) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                counts = [
                    (v.status or {}).get("policy", {}).get("policies")
                    for v in all_status(state).values()
                ]
                if all(c == want for c in counts):
                    return
                time.sleep(0.1)
            raise RuntimeError(f"daemons did not converge on {want} policies: {counts}")

        results: dict[str, dict[str, list[float]]] = {
            "same-node": {"off": [], "on": []},
            "cross-node": {"off": [], "on": []},
        }
        rules_on = 0
        for r in range(rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                if mode == "on":
                    cmd = [exe, "policy", "apply", "-f", fh.name, *etcd]
                else:
                    cmd = ["etcdctl", "--endpoints", state.etcd_endpoint]
                    cmd += ["del", "--prefix", "/flannelish/policy/policies/"]
                subprocess.run(
                    ["ip", "netns", "exec", state.underlay_netns, *cmd],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                converge(len(docs) if mode == "on" else 0)
                time.sleep(0.3)
                if mode == "on":
                    st = next(iter(all_status(state).values())).status or {}
                    rules_on = st.get("policy", {}).get("rules", 0)
                results["same-node"][mode].append(_iperf(a.netns, same.ip, seconds))
                results["cross-node"][mode].append(_iperf(a.netns, cross.ip, seconds))
        return _throughput_report(results, rules_on)
    finally:
        for s in servers:
            s.terminate()
            s.wait(timeout=5)
        subprocess.run([exe, "lab", "down", "--name", name], capture_output=True, timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument(
        "--only",
        choices=["compile", "convergence", "throughput", "throughput-lab"],
        default=None,
    )
    parser.add_argument("--lab", action="store_true", help="also throughput-lab (owns the lab)")
    args = parser.parse_args()
    report = {}
    if args.only in (None, "compile"):
        report["compile"] = bench_compile()
    if args.only in (None, "convergence"):
        report["convergence"] = bench_convergence(args.changes)
    if args.only in (None, "throughput"):
        report["throughput"] = bench_throughput(args.rounds, args.seconds)
    if args.only == "throughput-lab" or (args.only is None and args.lab):
        report["throughput_lab"] = bench_throughput_lab(args.rounds, args.seconds)
    print(json.dumps(report, indent=2))
    return 0 if all(r.get("ok") for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
