"""Property: the incremental compiler, after any changes, equals a compile from scratch."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannelish.policy.compile import compile_policies, render_delta
from flannelish.policy.incremental import IncrementalCompiler
from flannelish.policy.model import Endpoint, NamedPort, Namespace
from flannelish.policy.parse import parse_policies

from .test_policy_property import NAMESPACES, NODES, labels, policy

pytestmark = pytest.mark.unit

NODE = NODES[0]

op = st.one_of(
    st.tuples(st.just("policy"), st.integers(0, 3), policy),
    st.tuples(st.just("unpolicy"), st.integers(0, 3)),
    st.tuples(
        st.just("endpoint"),
        st.integers(0, 5),
        st.sampled_from(NAMESPACES),
        st.sampled_from(NODES),
        labels,
        st.booleans(),
    ),
    st.tuples(st.just("unendpoint"), st.integers(0, 5)),
    st.tuples(st.just("namespace"), st.sampled_from(NAMESPACES), labels),
    st.tuples(st.just("unnamespace"), st.sampled_from(NAMESPACES)),
)


def _policy(i: int, p: dict):
    doc = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"p{i}", "namespace": p["ns"]},
        "spec": p["spec"],
    }
    return parse_policies(json.dumps(doc))[0]


def _endpoint(i: int, ns: str, node: str, lab: dict, web: bool, v6: bool) -> Endpoint:
    ips = (f"10.244.{i % 2}.{i + 2}",) + ((f"fd44:{i % 2}::{i + 2}",) if v6 else ())
    return Endpoint(
        f"c{i}",
        node,
        ips,
        ns,
        f"pod{i}",
        tuple(sorted(lab.items())),
        (NamedPort("web", "TCP", 80 if web else 81),),
    )


def _same(a, b) -> None:
    assert a.sets == b.sets
    assert a.elements == b.elements
    assert a.rules == b.rules
    assert a.counters == b.counters


@settings(max_examples=100, deadline=None)
@given(st.lists(op, max_size=12))
def test_incremental_equals_a_full_compile(ops: list) -> None:
    inc = IncrementalCompiler(NODE)
    policies: dict[str, object] = {}
    endpoints: dict[int, Endpoint] = {}
    namespaces: dict[str, Namespace] = {}
    prev = inc.compiled()
    for step, o in enumerate(ops):
        kind = o[0]
        if kind == "policy":
            p = _policy(o[1], o[2])
            old = policies.pop(f"p{o[1]}", None)
            if old is not None and old.key != p.key:  # type: ignore[attr-defined]
                inc.delete_policy(old.key)  # type: ignore[attr-defined]
            policies[f"p{o[1]}"] = p
            inc.put_policy(p)
        elif kind == "unpolicy":
            old = policies.pop(f"p{o[1]}", None)
            if old is not None:
                inc.delete_policy(old.key)  # type: ignore[attr-defined]
        elif kind == "endpoint":
            old_ep = endpoints.get(o[1])
            ep = _endpoint(o[1], o[2], o[3], o[4], o[5], v6=step % 2 == 0)
            if old_ep is not None and old_ep.node != ep.node:
                inc.delete_endpoint(f"{old_ep.node}/{old_ep.container_id}")
            endpoints[o[1]] = ep
            inc.put_endpoint(ep)
        elif kind == "unendpoint":
            old_ep = endpoints.pop(o[1], None)
            if old_ep is not None:
                inc.delete_endpoint(f"{old_ep.node}/{old_ep.container_id}")
        elif kind == "namespace":
            namespaces[o[1]] = Namespace(o[1], tuple(sorted(o[2].items())))
            inc.put_namespace(namespaces[o[1]])
        else:
            namespaces.pop(o[1], None)
            inc.delete_namespace(o[1])
        got = inc.compiled()
        want = compile_policies(
            list(policies.values()),  # type: ignore[arg-type]
            list(endpoints.values()),
            namespaces,
            NODE,
        )
        _same(got, want)
        delta = render_delta(prev, got)
        assert delta is not None and ("delete table" not in delta)
        prev = got


def test_an_endpoint_change_recompiles_only_the_policies_it_touches() -> None:
    docs = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"p{i}", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"app": f"a{i}"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": f"r{i}"}}}]}],
            },
        }
        for i in range(20)
    ]
    inc = IncrementalCompiler(NODE)
    for p in parse_policies(json.dumps(docs)):
        inc.put_policy(p)
    before = inc.compiled()
    inc.put_endpoint(
        Endpoint("c1", "n2", ("10.244.1.5", "fd44:1::5"), "x", "c1", (("role", "r3"),))
    )
    assert inc._dirty == {"x/p3"}
    after = inc.compiled()
    delta = render_delta(before, after)
    assert delta is not None
    # one element per family into p3's peer set, nothing else (no chain rewritten)
    assert "add rule" not in delta and "flush" not in delta
    lines = [line for line in delta.splitlines() if line]
    assert len(lines) == 2 and all("add element" in line for line in lines)
    assert "10.244.1.5" in delta and "fd44:1::5" in delta
    # an unchanged policy's sets are the same objects: nothing to compare
    unchanged = [n for n in after.sets if "_in0_" not in n and n in before.sets]
    assert any(after.elements[n] is before.elements[n] for n in unchanged)
