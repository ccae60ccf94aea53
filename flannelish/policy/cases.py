"""Kubernetes' NetworkPolicy e2e layout and cases, shared by tests, the lab and bench.

Namespaces x, y, z (label ``ns=<name>``), pods a, b, c in each (label
``pod=<name>``), servers on ports 80 and 81, TCP and UDP.  Each case is a
list of NetworkPolicy documents (the shapes of the e2e suite and the
documentation); the expected matrix comes from flannelish.policy.evaluate.
"""

from __future__ import annotations

from typing import Any

from .model import Endpoint, Namespace

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (80, 81)
PROTOS = ("TCP", "UDP")


def layout_namespaces() -> dict[str, Namespace]:
    return {ns: Namespace(ns, (("ns", ns),)) for ns in NAMESPACES}


def layout_endpoints(ip_of: dict[str, str], node_of: dict[str, str]) -> list[Endpoint]:
    """`ip_of` / `node_of` map "x/a" to the pod's address and node."""
    return [
        Endpoint(
            f"cid-{ns}-{pod}",
            node_of[f"{ns}/{pod}"],
            (ip_of[f"{ns}/{pod}"],),
            ns,
            pod,
            (("pod", pod),),
        )
        for ns in NAMESPACES
        for pod in PODS
    ]


def _np(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def _sel(**labels: str) -> dict[str, Any]:
    return {"matchLabels": labels}


CASES: dict[str, list[dict[str, Any]]] = {
    "default-deny-ingress": [_np("deny-in", "x", {"podSelector": {}, "policyTypes": ["Ingress"]})],
    "default-deny-egress": [_np("deny-eg", "x", {"podSelector": {}, "policyTypes": ["Egress"]})],
    "allow-from-pod-selector": [
        _np(
            "allow-b",
            "x",
            {"podSelector": _sel(pod="a"), "ingress": [{"from": [{"podSelector": _sel(pod="b")}]}]},
        )
    ],
    "allow-from-namespace-selector": [
        _np(
            "allow-ns-y",
            "x",
            {
                "podSelector": _sel(pod="a"),
                "ingress": [{"from": [{"namespaceSelector": _sel(ns="y")}]}],
            },
        )
    ],
    "ns-and-pod-one-peer": [
        _np(
            "and",
            "x",
            {
                "podSelector": _sel(pod="a"),
                "ingress": [
                    {"from": [{"namespaceSelector": _sel(ns="y"), "podSelector": _sel(pod="b")}]}
                ],
            },
        )
    ],
    "ns-or-pod-two-peers": [
        _np(
            "or",
            "x",
            {
                "podSelector": _sel(pod="a"),
                "ingress": [
                    {"from": [{"namespaceSelector": _sel(ns="y")}, {"podSelector": _sel(pod="b")}]}
                ],
            },
        )
    ],
    "match-expressions": [
        _np(
            "expr",
            "x",
            {
                "podSelector": {
                    "matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]
                },
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchExpressions": [
                                        {"key": "ns", "operator": "NotIn", "values": ["y"]}
                                    ]
                                }
                            }
                        ]
                    }
                ],
            },
        )
    ],
    "port-80-only": [
        _np(
            "p80",
            "x",
            {
                "podSelector": _sel(pod="a"),
                "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}],
            },
        )
    ],
    "port-range-udp": [
        _np(
            "range",
            "x",
            {
                "podSelector": {},
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {}}],
                        "ports": [{"port": 81, "endPort": 90, "protocol": "UDP"}],
                    }
                ],
            },
        )
    ],
    "egress-to-one-namespace": [
        _np(
            "eg-y",
            "x",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": _sel(ns="y")}]}],
            },
        )
    ],
    "allow-all-ingress": [
        _np("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        _np("allow-all", "x", {"podSelector": {}, "ingress": [{}]}),
    ],
    "deny-egress-allow-ingress-both-types": [
        _np(
            "both",
            "y",
            {
                "podSelector": _sel(pod="b"),
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"namespaceSelector": _sel(ns="x")}]}],
            },
        ),
    ],
}


def ipblock_case(cidr: str, except_: list[str]) -> list[dict[str, Any]]:
    """Allow into x/a from `cidr` except `except_` (addresses depend on the run)."""
    return [
        _np(
            "ipblock",
            "x",
            {
                "podSelector": _sel(pod="a"),
                "ingress": [{"from": [{"ipBlock": {"cidr": cidr, "except": except_}}]}],
            },
        )
    ]
