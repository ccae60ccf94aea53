"""Property: compiled nft sets + rules (evaluated by nftmodel) agree with the policy model."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannelish.policy.compile import compile_policies
from flannelish.policy.evaluate import World, decide
from flannelish.policy.model import Endpoint, NamedPort, Namespace
from flannelish.policy.nftmodel import verdict
from flannelish.policy.parse import parse_policies

pytestmark = pytest.mark.unit

KEYS = ("app", "tier")
VALUES = ("a", "b")
NAMESPACES = ("x", "y")
NODES = ("n1", "n2")
EXTERNAL = ("192.168.7.1", "192.168.7.200", "fd00:7::1")

labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)
expr = st.one_of(
    st.builds(
        lambda k, v, op: {"key": k, "operator": op, "values": v},
        st.sampled_from(KEYS),
        st.lists(st.sampled_from(VALUES), min_size=1, max_size=2),
        st.sampled_from(["In", "NotIn"]),
    ),
    st.builds(
        lambda k, op: {"key": k, "operator": op},
        st.sampled_from(KEYS),
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
selector = st.builds(
    lambda ml, me: {
        **({"matchLabels": ml} if ml else {}),
        **({"matchExpressions": me} if me else {}),
    },
    labels,
    st.lists(expr, max_size=1),
)
ipblock = st.sampled_from(
    [
        {"cidr": "fd00::/8", "except": ["fd00:244:1::/48"]},
        {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]},
        {"cidr": "192.168.7.0/24", "except": ["192.168.7.128/25"]},
        {"cidr": "10.244.0.0/23"},
    ]
)
peer = st.one_of(
    st.builds(lambda s: {"podSelector": s}, selector),
    st.builds(lambda s: {"namespaceSelector": s}, selector),
    st.builds(lambda a, b: {"podSelector": a, "namespaceSelector": b}, selector, selector),
    st.builds(lambda b: {"ipBlock": b}, ipblock),
)
port = st.one_of(
    st.builds(
        lambda p, pr: {"port": p, "protocol": pr},
        st.sampled_from([80, 81]),
        st.sampled_from(["TCP", "UDP"]),
    ),
    st.builds(
        lambda pr: {"port": 80, "endPort": 81, "protocol": pr}, st.sampled_from(["TCP", "UDP"])
    ),
    st.just({"port": "web"}),
    st.just({"protocol": "UDP"}),
)
rule = st.builds(
    lambda peers, ports: {
        **({"_p": peers} if peers is not None else {}),
        **({"ports": ports} if ports else {}),
    },
    st.one_of(st.none(), st.lists(peer, min_size=1, max_size=2)),
    st.lists(port, max_size=2),
)


def _rules(rs: list[dict], key: str) -> list[dict]:
    return [{(key if k == "_p" else k): v for k, v in r.items()} for r in rs]


policy = st.builds(
    lambda ns, sel, types, ing, eg: {
        "spec": {
            "podSelector": sel,
            "policyTypes": types,
            "ingress": _rules(ing, "from"),
            "egress": _rules(eg, "to"),
        },
        "ns": ns,
    },
    st.sampled_from(NAMESPACES),
    selector,
    st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
    st.lists(rule, max_size=2),
    st.lists(rule, max_size=2),
)
endpoint = st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(NODES), labels, st.booleans())


@given(
    st.lists(policy, max_size=4),
    st.lists(endpoint, min_size=2, max_size=6),
    st.dictionaries(st.sampled_from(NAMESPACES), labels),
)
def test_compiled_rules_agree_with_the_model(pols: list, eps: list, ns_labels: dict) -> None:
    docs = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"p{i}", "namespace": p["ns"]},
            "spec": p["spec"],
        }
        for i, p in enumerate(pols)
    ]
    policies = parse_policies(json.dumps(docs)) if docs else []
    endpoints = [
        Endpoint(
            f"c{i}",
            node,
            (f"10.244.{i % 2}.{i + 2}", f"fd00:244:{i % 2}::{i + 2}"),
            ns,
            f"pod{i}",
            tuple(sorted(lab.items())),
            (NamedPort("web", "TCP", 80 if web else 81),),
        )
        for i, (ns, node, lab, web) in enumerate(eps)
    ]
    namespaces = {n: Namespace(n, tuple(sorted(lab.items()))) for n, lab in ns_labels.items()}
    world = World(policies, endpoints, namespaces)
    compiled = {n: compile_policies(policies, endpoints, namespaces, n) for n in NODES}
    addrs = [ip for e in endpoints for ip in e.ips] + list(EXTERNAL)
    node_of = {ip: e.node for e in endpoints for ip in e.ips}
    for src in addrs:
        for dst in addrs:
            if src == dst or (src in EXTERNAL and dst in EXTERNAL) or (":" in src) != (":" in dst):
                continue
            for proto, p in (("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81), ("ICMP", 0)):
                expected = decide(world, src, dst, proto, p).allowed
                hops = {
                    node_of[a] for a in (src, dst) if a in node_of
                }  # nodes the packet is forwarded on
                got = all(verdict(compiled[n], src, dst, proto, p) == "accept" for n in hops)
                assert got == expected, (src, dst, proto, p)
