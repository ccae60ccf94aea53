"""The doctor's WireGuard check: ``NodeFacts -> list[Finding]`` (pure).

Kernel or userspace (and why), the key file (present, 0600), and peers
without a recent handshake (WireGuard re-handshakes every 2 minutes while
traffic flows; 180 s is the limit after which a session is dead).
"""

from __future__ import annotations

from flannelish.node.checks import Finding, Severity
from flannelish.node.facts import NodeFacts, WireguardFacts

STALE_HANDSHAKE = 180.0  # seconds: REJECT_AFTER_TIME in the WireGuard paper


def check_wireguard(facts: NodeFacts) -> list[Finding]:
    wg = facts.wireguard
    if wg is None:
        return []
    out = _device_findings(facts, wg, key_file=True)
    if facts.wireguard_v6 is not None:  # one key for both: its file is checked once
        out += _device_findings(facts, facts.wireguard_v6, key_file=False)
    return out


def _device_findings(facts: NodeFacts, wg: WireguardFacts, key_file: bool) -> list[Finding]:
    dev = wg.device
    out: list[Finding] = []
    if wg.implementation == "userspace":
        out.append(
            Finding(
                Severity.INFO,
                "wireguard",
                f"{dev} is userspace WireGuard (wireguard-go, pid {wg.wireguard_go_pid}): "
                + (
                    "the kernel has a wireguard module, but the device is userspace"
                    if wg.kernel_module
                    else "this kernel has no WireGuard module"
                ),
                "fine to run; the kernel module is faster (Linux >= 5.6 or a backport), "
                "and the daemon uses it by itself when `ip link add type wireguard` works",
            )
        )
    elif wg.implementation == "kernel":
        out.append(Finding(Severity.INFO, "wireguard", f"{dev} is kernel WireGuard"))
    else:
        out.append(
            Finding(
                Severity.ERROR,
                "wireguard",
                f"no {dev} device (neither kernel WireGuard nor a running wireguard-go)",
                "is the daemon running? it starts wireguard-go and restarts it if it dies",
            )
        )
    if not key_file:
        pass
    elif wg.key_file_mode is None:
        out.append(
            Finding(
                Severity.ERROR,
                "wireguard",
                f"key file {wg.key_file} is missing: the next daemon start fails "
                "instead of taking a new identity",
                "restore the key file from a backup",
            )
        )
    elif wg.key_file_mode & 0o077:
        out.append(
            Finding(
                Severity.ERROR,
                "wireguard",
                f"key file {wg.key_file} has mode {wg.key_file_mode:o}: others can read the key",
                f"chmod 600 {wg.key_file}",
            )
        )
    if wg.error:
        out.append(Finding(Severity.WARNING, "wireguard", f"cannot read {dev}: {wg.error}"))
    for p in wg.peers:
        age = facts.now - p["last_handshake"] if p["last_handshake"] else None
        if age is None or age > STALE_HANDSHAKE:
            what = "no handshake yet" if age is None else f"last handshake {age:.0f}s ago"
            out.append(
                Finding(
                    Severity.WARNING,
                    "wireguard",
                    f"peer {p['allowed_ips']} at {p['endpoint']}: {what}",
                    "is the WireGuard port (udp/51820, 51821 for flannel-wg-v6) open between "
                    "the nodes, and does the peer's lease carry its current PublicKey?",
                )
            )
    if wg.peers and not any(f.severity is Severity.WARNING for f in out):
        out.append(
            Finding(
                Severity.INFO,
                "wireguard",
                f"{dev}: {len(wg.peers)} peers, all with a recent handshake",
            )
        )
    return out
