"""`flannelish doctor`: find the classic Flannel node problems and say how to fix each.

Design
------
Two halves with a plain-data seam between them:

* flannelish.node.facts.collect gathers NodeFacts from the running system.
  It is the only part that needs root or the kernel, and it never changes
  anything.
* Each check is a pure function ``NodeFacts -> list[Finding]``
  (flannelish.node.checks, flannelish.node.firewall_checks,
  flannelish.node.flanneld_checks); unit tests build
  NodeFacts by hand.  A fact that could not be gathered (None) makes the
  checks that need it report an ``info`` finding instead of guessing.

This module runs every check in a fixed order and collects the findings into
a :class:`Report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flannelish.node.checks import (
    Finding,
    Severity,
    check_leases,
    check_mtu,
    check_subnet_env,
    check_sysctls,
)
from flannelish.node.facts import NodeFacts
from flannelish.node.firewall_checks import check_firewall
from flannelish.node.flanneld_checks import check_flanneld
from flannelish.node.policy_checks import check_policy
from flannelish.node.wireguard_checks import check_wireguard

CHECKS: list[tuple[str, Callable[[NodeFacts], list[Finding]]]] = [
    ("subnet-env", check_subnet_env),
    ("mtu", check_mtu),
    ("sysctl", check_sysctls),
    ("firewall", check_firewall),
    ("leases", check_leases),
    ("flanneld", check_flanneld),
    ("wireguard", check_wireguard),
    ("policy", check_policy),
]


@dataclass
class Report:
    results: list[tuple[str, list[Finding]]]

    @property
    def findings(self) -> list[Finding]:
        return [f for _, group in self.results for f in group]

    @property
    def ok(self) -> bool:
        return not any(f.severity is Severity.ERROR for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [
                {"name": name, "findings": [f.to_dict() for f in group]}
                for name, group in self.results
            ],
        }


def run_checks(facts: NodeFacts) -> Report:
    return Report([(name, check(facts)) for name, check in CHECKS])
