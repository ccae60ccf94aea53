"""The doctor's network-policy check."""

from __future__ import annotations

import pytest

from flannelish.node.checks import Severity
from flannelish.node.facts import SYSCTL_BRIDGE_NF, NodeFacts
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
