"""The doctor's network-policy check: ``NodeFacts -> list[Finding]`` (pure).

Policy is "in force" on a node while the daemon's marker
(``<dir of subnet.env>/flannelish-policy.json``) exists.  Then the policy table
must be there and bridged pod traffic (IPv4 and IPv6) must reach the inet
hooks; a policy table without the marker is a leftover.  When all is well the
finding says what the table holds: policies (one drop counter each, its comment
the policy), rules, sets and their elements, and the packets each policy dropped.
"""

from __future__ import annotations

from typing import Any

from flannelish.node.checks import Finding, Severity
from flannelish.node.facts import SYSCTL_BRIDGE_NF, SYSCTL_BRIDGE_NF6, NodeFacts

POLICY_TABLE = ("inet", "flannelish-policy")


def check_policy(facts: NodeFacts) -> list[Finding]:
    tables = {
        (i["table"].get("family"), i["table"].get("name"))
        for i in facts.ruleset or []
        if isinstance(i.get("table"), dict)
    }
    has_table = POLICY_TABLE in tables
    if not facts.policy_marker:
        if has_table:
            return [
                Finding(
                    Severity.WARNING,
                    "policy",
                    "table inet flannelish-policy exists but policy is not enabled on this node",
                    "a leftover: `flannelish uninstall` removes it (or run `daemon --policy`)",
                )
            ]
        return []
    out = []
    if facts.ruleset is not None and not has_table:
        out.append(
            Finding(
                Severity.ERROR,
                "policy",
                "network policy is enabled (marker present) but table inet flannelish-policy is "
                "missing: pods here are not protected",
                "start `flannelish daemon --policy`: it rewrites the table at start and resyncs",
            )
        )
    if facts.sysctls.get(SYSCTL_BRIDGE_NF) != "1":
        out.append(
            Finding(
                Severity.ERROR,
                "policy",
                f"{SYSCTL_BRIDGE_NF} is not 1: same-node pod traffic bypasses every policy",
                "modprobe br_netfilter; the daemon sets the sysctl at start",
            )
        )
    elif facts.sysctls.get(SYSCTL_BRIDGE_NF6, "1") != "1":
        out.append(
            Finding(
                Severity.WARNING,
                "policy",
                f"{SYSCTL_BRIDGE_NF6} is not 1: same-node IPv6 pod traffic bypasses every policy",
                f"sysctl -w {SYSCTL_BRIDGE_NF6}=1; the daemon sets it at start",
            )
        )
    if not out:
        out.append(Finding(Severity.INFO, "policy", summary(facts.ruleset or [])))
    return out


def summary(ruleset: list[dict[str, Any]]) -> str:
    """What the policy table holds, from `nft -j list ruleset` items."""

    def ours(kind: str) -> list[dict[str, Any]]:
        return [
            i[kind]
            for i in ruleset
            if isinstance(i.get(kind), dict)
            and (i[kind].get("family"), i[kind].get("table")) == POLICY_TABLE
        ]

    counters = [c for c in ours("counter") if str(c.get("name", "")).startswith("drop_")]
    sets = ours("set")
    elements = sum(len(s.get("elem") or []) for s in sets)
    drops = sorted(
        ((str(c.get("comment") or c.get("name")), int(c.get("packets") or 0)) for c in counters),
        key=lambda d: (-d[1], d[0]),
    )
    text = (
        f"network policy enforced: {len(counters)} policies, {len(ours('rule'))} rules, "
        f"{len(sets)} sets with {elements} elements"
    )
    dropped = [f"{name} {n}" for name, n in drops if n]
    if dropped:
        shown = ", ".join(dropped[:5]) + (
            f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
        )
        text += f"; packets dropped by policy: {shown}"
    return text
