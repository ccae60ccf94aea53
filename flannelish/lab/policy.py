"""Network policy in the lab: pods with namespaces and labels, and `lab check --policy FILE`.

``lab up --pods e2e`` (Kubernetes' e2e layout: namespaces x, y, z labelled
``ns=<name>``, pods a, b, c labelled ``pod=<name>``, spread over the nodes) or
``--pods FILE`` (``{"namespaces": {"x": {"ns": "x"}}, "pods": [{"name": "a",
"namespace": "x", "labels": {"pod": "a"}, "node": 1}]}``, YAML or JSON) runs the
daemons with ``--policy`` and attaches those pods with their identity.

``lab check --policy FILE`` makes FILE the lab's whole policy set (others are
deleted), waits until every daemon enforces it, probes every pod pair on TCP
and UDP ports 80 and 81, and compares with the model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flannelish.errors import ConfigError, FlannelishError
from flannelish.lab.state import LabState
from flannelish.policy import cases
from flannelish.policy.evaluate import World, decide
from flannelish.policy.model import Endpoint, Namespace
from flannelish.testing.proc import run

PROBES = [(proto, port) for proto in cases.PROTOS for port in cases.PORTS]
CONVERGE_TIMEOUT = 10.0


def load_pods_spec(arg: str, nodes: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    if arg == "e2e":
        pods = [
            {"name": p, "namespace": ns, "labels": {"pod": p}, "node": (i % nodes) + 1}
            for i, (ns, p) in enumerate((ns, p) for ns in cases.NAMESPACES for p in cases.PODS)
        ]
        return pods, {ns: {"ns": ns} for ns in cases.NAMESPACES}
    from flannelish.policy.parse import load_documents

    docs = load_documents(Path(arg).read_text(encoding="utf-8"))
    if len(docs) != 1:
        raise ConfigError(f"--pods {arg}: expected one document")
    doc = docs[0]
    pods = []
    for i, item in enumerate(doc.get("pods") or []):
        if not isinstance(item, dict) or not item.get("name"):
            raise ConfigError(f"--pods {arg}: pods[{i}] needs a name")
        node = int(item.get("node", (i % nodes) + 1))
        if not 1 <= node <= nodes:
            raise ConfigError(f"--pods {arg}: pods[{i}].node must be 1..{nodes}")
        pods.append(
            {
                "name": str(item["name"]),
                "namespace": str(item.get("namespace") or "default"),
                "labels": {str(k): str(v) for k, v in (item.get("labels") or {}).items()},
                "node": node,
            }
        )
    namespaces = {
        str(k): {str(a): str(b) for a, b in (v or {}).items()}
        for k, v in (doc.get("namespaces") or {}).items()
    }
    return pods, namespaces


def _flannelish(state: LabState, exe: str, *args: str, check: bool = True) -> Any:
    result = run(
        [exe, *args, "--etcd-endpoints", state.etcd_endpoint],
        netns=state.underlay_netns,
        check=False,
    )
    if check and result.returncode != 0:
        raise FlannelishError(
            f"flannelish {' '.join(args)} failed", (result.stderr or result.stdout).strip()
        )
    return result


def label_namespaces(state: LabState, exe: str) -> None:
    for ns, labels in state.spec.namespaces.items():
        _flannelish(state, exe, "namespace", "label", ns, *(f"{k}={v}" for k, v in labels.items()))


def world_of(state: LabState, policies: list[Any]) -> World:
    """The model's view: the lab's pods as the CNI plugin registered them."""
    node_ip = {n.name: n.ip for n in state.nodes}
    eps = [
        Endpoint(
            p.container_id,
            node_ip[p.node],
            (p.ip,),
            p.namespace or "default",
            p.pod_name or p.container_id,
            tuple(sorted(p.labels.items())),
        )
        for p in state.pods
        if p.attached
    ]
    namespaces = {
        ns: Namespace(ns, tuple(sorted(lab.items()))) for ns, lab in state.spec.namespaces.items()
    }
    return World(policies, eps, namespaces)


@dataclass
class PolicyCheck:
    policies: list[str]
    converge_seconds: float
    results: list[tuple[str, str, str, int, bool, bool]] = field(
        default_factory=list
    )  # a, b, proto, port, want, got

    @property
    def differences(self) -> list[tuple[str, str, str, int, bool, bool]]:
        return [r for r in self.results if r[4] != r[5]]


def check_policy(state: LabState, path: Path, exe: str, timeout: float = 0.4) -> PolicyCheck:
    from flannelish.lab.nodeapi import all_status
    from flannelish.policy.parse import parse_policies
    from flannelish.policy.probe import PodServers, probe_matrix

    if not state.spec.policy:
        raise ConfigError(
            "this lab runs without policy", "build it with `flannelish lab up --pods e2e`"
        )
    policies = parse_policies(path.read_text(encoding="utf-8"))  # validated before anything changes
    listed = json.loads(_flannelish(state, exe, "policy", "list", "--json").stdout or "[]")
    wanted = {p.key for p in policies}
    for doc in listed:
        meta = doc["metadata"]
        if f"{meta['namespace']}/{meta['name']}" not in wanted:
            _flannelish(state, exe, "policy", "delete", meta["name"], "-n", meta["namespace"])
    started = time.monotonic()
    _flannelish(state, exe, "policy", "apply", "-f", str(path))
    while True:
        views = all_status(state)
        counts = [(v.status or {}).get("policy", {}).get("policies") for v in views.values()]
        if all(c == len(policies) for c in counts):
            break
        if time.monotonic() - started > CONVERGE_TIMEOUT:
            raise FlannelishError(
                "daemons did not converge on the policies", f"policy counts: {counts}"
            )
        time.sleep(0.05)
    report = PolicyCheck(sorted(wanted), time.monotonic() - started)
    world = world_of(state, policies)
    pods = {p.name: p for p in state.pods if p.attached}
    servers = PodServers({k: p.netns for k, p in pods.items()})
    try:
        observed = probe_matrix(
            {k: p.netns for k, p in pods.items()},
            {k: p.ip for k, p in pods.items()},
            PROBES,
            timeout,
        )
    finally:
        servers.close()
    for (a, b, proto, port), got in sorted(observed.items()):
        want = decide(world, pods[a].ip, pods[b].ip, proto, port).allowed
        report.results.append((a, b, proto, port, want, got))
    return report


def print_check(report: PolicyCheck, echo: Any) -> bool:
    """The matrices (one per probe), expected vs observed; True if they agree."""
    pods = sorted({r[0] for r in report.results})
    width = max((len(p) for p in pods), default=4)
    echo(
        f"policies: {', '.join(report.policies) or '(none)'}; enforced on every node in "
        f"{report.converge_seconds:.2f}s"
    )
    echo(
        "legend: . allowed, X denied (as expected); ! allowed but expected denied, "
        "? denied but expected allowed"
    )
    by_key = {(a, b, proto, port): (want, got) for a, b, proto, port, want, got in report.results}
    for proto, port in PROBES:
        echo(f"\n{port}/{proto.lower()}  (rows: from, columns: to)")
        echo(" " * (width + 1) + " ".join(f"{i:>2}" for i in range(len(pods))))
        for i, a in enumerate(pods):
            cells = []
            for b in pods:
                want, got = by_key[(a, b, proto, port)]
                cells.append(
                    " ." if want == got and got else " X" if want == got else " !" if got else " ?"
                )
            echo(f"{a:<{width}} " + " ".join(cells) + f"   {i}")
    diffs = report.differences
    for a, b, proto, port, want, got in diffs:
        echo(
            f"MISMATCH {a} -> {b} {port}/{proto.lower()}: "
            f"expected {'allowed' if want else 'denied'}, observed {'allowed' if got else 'denied'}"
        )
    total = len(report.results)
    if diffs:
        echo(f"✗ policy check failed: {len(diffs)}/{total} probes differ from the model")
        return False
    echo(f"✓ policy check passed: {total}/{total} probes as the model expects")
    return True
