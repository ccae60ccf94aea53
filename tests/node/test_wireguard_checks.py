"""doctor's WireGuard checks with both devices of Mode separate (facts built by hand)."""

from __future__ import annotations

import pytest

from flannelish.node.checks import Severity
from flannelish.node.facts import NodeFacts, WireguardFacts
from flannelish.node.wireguard_checks import check_wireguard

pytestmark = pytest.mark.unit


def wg(dev: str, handshake: float, mode: int | None = 0o600) -> WireguardFacts:
    peer = {"allowed_ips": "x", "endpoint": "e", "last_handshake": handshake}
    return WireguardFacts("userspace", False, 42, "/k", mode, [peer], device=dev)


def test_both_devices_are_checked_and_the_key_file_once():
    facts = NodeFacts("/run/flannel/subnet.env")
    facts.wireguard = wg("flannel-wg", facts.now - 5, mode=0o644)
    facts.wireguard_v6 = wg("flannel-wg-v6", 0, mode=0o644)
    found = check_wireguard(facts)
    text = [f.message for f in found]
    assert any(t.startswith("flannel-wg is userspace") for t in text)
    assert any(t.startswith("flannel-wg-v6 is userspace") for t in text)
    assert sum("others can read the key" in t for t in text) == 1
    stale = [f for f in found if f.severity is Severity.WARNING]
    assert len(stale) == 1 and "no handshake yet" in stale[0].message


def test_ipv6_only_separate_reports_flannel_wg_v6_alone():
    facts = NodeFacts("/run/flannel/subnet.env")
    facts.wireguard = wg("flannel-wg-v6", facts.now - 5)
    text = [f.message for f in check_wireguard(facts)]
    assert "flannel-wg-v6: 1 peers, all with a recent handshake" in text
    assert not any("no flannel-wg device" in t for t in text)
