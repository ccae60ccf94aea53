"""The doctor's network-policy check: ``NodeFacts -> list[Finding]`` (pure).

Policy is "in force" on a node while the daemon's marker
(``<dir of subnet.env>/flannelish-policy.json``) exists.  Then the policy table
must be there and bridged pod traffic must reach the inet hooks; a policy
table without the marker is a leftover.
"""

from __future__ import annotations

from flannelish.node.checks import Finding, Severity
from flannelish.node.facts import SYSCTL_BRIDGE_NF, NodeFacts

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
    if not out:
        out.append(Finding(Severity.INFO, "policy", "network policy enforced (table present)"))
    return out
