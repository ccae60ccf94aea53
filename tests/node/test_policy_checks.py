"""The doctor's network-policy check."""

from __future__ import annotations

import pytest

from flannelish.node.checks import Severity
from flannelish.node.facts import SYSCTL_BRIDGE_NF, SYSCTL_BRIDGE_NF6, NodeFacts
from flannelish.node.policy_checks import check_policy

pytestmark = pytest.mark.unit
TABLE = {"table": {"family": "inet", "name": "flannelish-policy"}}


def facts(marker: bool, table: bool, bridge_nf: str | None = "1") -> NodeFacts:
    f = NodeFacts("/run/flannel/subnet.env", ruleset=[TABLE] if table else [])
    f.policy_marker = marker
    f.sysctls = {SYSCTL_BRIDGE_NF: bridge_nf}
    return f


def test_policy_check() -> None:
    assert check_policy(facts(False, False)) == []
    (leftover,) = check_policy(facts(False, True))
    assert leftover.severity == Severity.WARNING and "uninstall" in leftover.fix
    (missing,) = check_policy(facts(True, False))
    assert missing.severity == Severity.ERROR and "not protected" in missing.message
    (bypass,) = check_policy(facts(True, True, "0"))
    assert bypass.severity == Severity.ERROR and "bypasses" in bypass.message
    (ok,) = check_policy(facts(True, True))
    assert ok.severity == Severity.INFO


def test_ipv6_bridge_hook_off_is_reported() -> None:
    f = facts(True, True)
    f.sysctls[SYSCTL_BRIDGE_NF6] = "0"
    (warn,) = check_policy(f)
    assert warn.severity == Severity.WARNING and "IPv6" in warn.message


def test_the_healthy_finding_says_what_the_table_holds() -> None:
    t = {"family": "inet", "table": "flannelish-policy"}
    f = facts(True, True)
    assert f.ruleset is not None
    f.ruleset += [
        {"counter": {**t, "name": "drop_aaaa", "comment": "x/deny-all", "packets": 7}},
        {"counter": {**t, "name": "drop_bbbb", "comment": "y/web", "packets": 0}},
        {"set": {**t, "name": "s_aaaa_4", "elem": ["10.244.1.2", "10.244.1.3"]}},
        {"set": {**t, "name": "s_aaaa_6", "elem": ["fd44:1::2"]}},
        {"set": {**t, "name": "iso_in_4"}},
        {"rule": {**t, "chain": "forward"}},
        {"rule": {**t, "chain": "forward"}},
        {"rule": {"family": "inet", "table": "other", "chain": "forward"}},
        {"counter": {"family": "ip", "table": "other", "name": "drop_x", "packets": 9}},
    ]
    (ok,) = check_policy(f)
    assert ok.severity == Severity.INFO
    assert ok.message == (
        "network policy enforced: 2 policies, 2 rules, 3 sets with 3 elements; "
        "packets dropped by policy: x/deny-all 7"
    )
