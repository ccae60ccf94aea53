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


def _printed(lines: list[str]) -> str:
    import io

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, highlight=False, soft_wrap=True, width=200)
    for line in lines:
        console.print(line)
    return out.getvalue()


def test_status_shows_each_device_with_its_peers_and_ipv6_endpoints_in_brackets():
    from flannelish.cli.node import render_status

    def dev(name: str, family: str, port: int, pid: int) -> dict:
        return {"device": name, "implementation": "userspace (wireguard-go)",
                "listen_port": port, "families": [family], "wireguard_go_pid": pid,
                "wireguard_go_restarts": 0}  # fmt: skip

    def peer(device: str, subnet: str, endpoint: str) -> dict:
        return {"device": device, "public_key": "K", "endpoint": endpoint,
                "allowed_ips": [subnet], "handshake_age_seconds": 3.0, "rx_bytes": 1,
                "tx_bytes": 2}  # fmt: skip

    doc = {
        "ready": True,
        "wireguard": {
            "implementation": "userspace (wireguard-go)",
            "device": "flannel-wg",
            "devices": [
                dev("flannel-wg", "ipv4", 51820, 41),
                dev("flannel-wg-v6", "ipv6", 51821, 42),
            ],
            "public_key": "PUB",
            "key_file": "/k",
            "key_file_mode": "0o600",
            "peers": [
                peer("flannel-wg", "10.244.2.0/24", "198.18.0.2:51820"),
                peer("flannel-wg-v6", "fd44:0:0:2::/64", "[fd18::2]:51821"),
            ],
        },
    }
    text = _printed(render_status(doc))
    assert "userspace (wireguard-go); public key PUB" in text
    lines = text.splitlines()
    v4 = next(i for i, line in enumerate(lines) if line.strip().startswith("flannel-wg "))
    v6 = next(i for i, line in enumerate(lines) if line.strip().startswith("flannel-wg-v6 "))
    assert "IPv4, udp/51820, wireguard-go pid 41" in lines[v4]
    assert "10.244.2.0/24 at 198.18.0.2:51820: handshake 3s ago" in lines[v4 + 1]
    assert "IPv6, udp/51821, wireguard-go pid 42" in lines[v6]
    # rich would take "[fd18::2]" for a markup tag and print ":51821" alone
    assert "fd44:0:0:2::/64 at [fd18::2]:51821: handshake 3s ago" in lines[v6 + 1]
