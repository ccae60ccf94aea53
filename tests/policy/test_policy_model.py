"""The policy model: parsing/validation, Kubernetes semantics, the compiled ruleset."""

from __future__ import annotations

import json

import pytest

from flannelish.policy import cases
from flannelish.policy.compile import compile_policies, render, render_delta
from flannelish.policy.evaluate import World, decide
from flannelish.policy.model import Endpoint, NamedPort
from flannelish.policy.nftmodel import verdict
from flannelish.policy.parse import PolicyError, parse_policies

pytestmark = pytest.mark.unit

IPS = {
    f"{ns}/{p}": f"10.244.{i}.{j + 2}" for i, ns in enumerate("xyz") for j, p in enumerate("abc")
}
NODES = {k: ("n1" if k.endswith("a") else "n2") for k in IPS}


def world(docs: list[dict]) -> World:
    return World(
        parse_policies(json.dumps(docs)),
        cases.layout_endpoints(IPS, NODES),
        cases.layout_namespaces(),
    )


def allowed(w: World, src: str, dst: str, port: int = 80, proto: str = "TCP") -> bool:
    return decide(w, IPS[src], IPS[dst], proto, port).allowed


def test_parse_yaml_multi_document_and_defaults() -> None:
    text = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: http}]}]
"""
    a, b = parse_policies(text)
    assert a.policy_types == ("Ingress",) and a.ingress == ()
    assert b.namespace == "default" and b.policy_types == ("Ingress", "Egress")
    assert b.egress[0].ports[0].port == "http" and b.egress[0].ports[0].protocol == "TCP"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 70}]}]},
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            {
                "podSelector": {},
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}],
            },
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.podSelector.matchExpressions[0].values",
        ),
        ({"podSelector": {}, "policyTypes": ["Sideways"]}, "spec.policyTypes[0]"),
        ({"podSelector": {}, "ingress": [{"form": []}]}, "spec.ingress[0].form"),
        ({}, "spec.podSelector"),
        (
            {
                "podSelector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}],
            },
            "spec.ingress[0].from[0]",
        ),
    ],
)
def test_invalid_documents_name_the_field(spec: dict, field: str) -> None:
    doc = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p"},
        "spec": spec,
    }
    with pytest.raises(PolicyError) as err:
        parse_policies(json.dumps(doc))
    assert err.value.field == field


def test_second_bad_document_is_named() -> None:
    good = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {"podSelector": {}},
    }
    bad = {**good, "spec": {"podSelector": {"matchLabels": {"a": 5}}}}
    with pytest.raises(PolicyError, match=r"document 1: spec.podSelector.matchLabels.a"):
        parse_policies(json.dumps([good, bad]))


def test_kubernetes_semantics() -> None:
    w = world(cases.CASES["default-deny-ingress"])
    assert not allowed(w, "y/a", "x/b") and not allowed(w, "x/a", "x/b")
    assert allowed(w, "x/a", "y/b")  # egress is not isolated
    w = world(cases.CASES["default-deny-egress"])
    assert not allowed(w, "x/a", "y/b") and allowed(w, "y/a", "x/b")
    w = world(cases.CASES["ns-and-pod-one-peer"])
    assert (
        allowed(w, "y/b", "x/a") and not allowed(w, "y/a", "x/a") and not allowed(w, "x/b", "x/a")
    )
    w = world(cases.CASES["ns-or-pod-two-peers"])
    assert allowed(w, "y/a", "x/a") and allowed(w, "x/b", "x/a") and not allowed(w, "z/b", "x/a")
    w = world(cases.CASES["port-80-only"])
    assert allowed(w, "z/c", "x/a", 80) and not allowed(w, "z/c", "x/a", 81)
    assert not allowed(w, "z/c", "x/a", 80, "UDP")
    w = world(cases.CASES["port-range-udp"])
    assert allowed(w, "y/a", "x/b", 81, "UDP") and not allowed(w, "y/a", "x/b", 80, "UDP")
    w = world(cases.CASES["egress-to-one-namespace"])
    assert (
        allowed(w, "x/a", "y/c") and not allowed(w, "x/a", "z/c") and not allowed(w, "x/a", "x/b")
    )
    w = world(cases.CASES["allow-all-ingress"])
    assert allowed(w, "z/a", "x/c")
    w = world(cases.CASES["match-expressions"])
    assert allowed(w, "z/a", "x/b") and not allowed(w, "y/a", "x/b") and allowed(w, "y/a", "x/c")
    # a pod always reaches itself
    w = world(cases.CASES["default-deny-ingress"] + cases.CASES["default-deny-egress"])
    assert decide(w, IPS["x/a"], IPS["x/a"], "TCP", 80).allowed


def test_ipblock_except_and_explain() -> None:
    w = world(cases.ipblock_case("10.244.1.0/24", ["10.244.1.3/32"]))
    assert (
        allowed(w, "y/a", "x/a") and not allowed(w, "y/b", "x/a") and not allowed(w, "z/a", "x/a")
    )
    v = decide(w, IPS["y/a"], IPS["x/a"], "TCP", 80)
    assert v.ingress.policy == "x/ipblock" and v.ingress.rule == 0
    v = decide(w, IPS["y/b"], IPS["x/a"], "TCP", 80)
    assert "isolated for ingress by x/ipblock" in v.ingress.reason


def test_named_ports() -> None:
    docs = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "np", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]},
        }
    ]
    w = world(docs)
    w.endpoints = [
        Endpoint(
            e.container_id,
            e.node,
            e.ips,
            e.namespace,
            e.name,
            e.labels,
            (NamedPort("web", "TCP", 81 if e.name == "b" else 80),),
        )
        for e in w.endpoints
    ]
    assert allowed(w, "y/a", "x/a", 80) and not allowed(w, "y/a", "x/a", 81)
    assert allowed(w, "y/a", "x/b", 81) and not allowed(w, "y/a", "x/b", 80)
    for node in ("n1", "n2"):
        c = compile_policies(w.policies, w.endpoints, w.namespaces, node)
        for dst in ("x/a", "x/b"):
            for port in (80, 81):
                if NODES[dst] == node:
                    assert (verdict(c, IPS["y/a"], IPS[dst], "TCP", port) == "accept") == allowed(
                        w, "y/a", dst, port
                    )


def test_rules_grow_with_policies_not_pods() -> None:
    w = world(cases.CASES["ns-or-pod-two-peers"])
    small = compile_policies(w.policies, w.endpoints, w.namespaces, "n1")
    more = w.endpoints + [
        Endpoint(f"c{i}", "n1", (f"10.244.9.{i}",), "x", f"p{i}", (("pod", "a"),))
        for i in range(2, 200)
    ]
    big = compile_policies(w.policies, more, w.namespaces, "n1")
    assert len(big.rules) == len(small.rules)
    delta = render_delta(small, big)
    assert delta is not None and "add element inet flannelish-policy" in delta
    assert "chain" not in delta
    script = render(big)
    assert script.count("\n    ") == len(big.rules) + 1  # +1: the base chain's type line


def test_replies_pass() -> None:
    w = world(cases.CASES["default-deny-ingress"] + cases.CASES["default-deny-egress"])
    c = compile_policies(w.policies, w.endpoints, w.namespaces, "n1")
    assert verdict(c, IPS["x/a"], IPS["y/b"], "TCP", 80) == "drop"
    assert verdict(c, IPS["x/a"], IPS["y/b"], "TCP", 80, established=True) == "accept"


@pytest.mark.parametrize(
    ("metadata", "spec", "field"),
    [
        ({"name": "web\n"}, {"podSelector": {}}, "metadata.name"),
        ({"name": "p", "namespace": "ns\n"}, {"podSelector": {}}, "metadata.namespace"),
        ({"name": "p"}, {"podSelector": {"matchLabels": {"app\n": "x"}}}, "spec.podSelector"),
        ({"name": "p"}, {"podSelector": {"matchLabels": {"app": "x\n"}}}, "spec.podSelector"),
        (
            {"name": "p"},
            {"podSelector": {}, "ingress": [{"ports": [{"port": "http\n"}]}]},
            "spec.ingress[0].ports[0]",
        ),
    ],
)
def test_a_trailing_newline_is_not_a_valid_name_label_or_port(metadata, spec, field) -> None:
    """Names are matched whole: with match() and "$", "web\\n" passed (policies come from etcd)."""
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": metadata, "spec": spec}  # fmt: skip
    with pytest.raises(PolicyError) as err:
        parse_policies(json.dumps(doc))
    assert err.value.field.startswith(field), err.value.field
