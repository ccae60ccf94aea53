"""The doctor's ``firewall`` check: would a firewall drop VXLAN or forwarded pod traffic?

The nft ruleset is evaluated for a sample packet by flannelish.node.nft_verdict
(VXLAN from each peer on the input hook, pod to pod on the forward hook);
rules in iptables-legacy, which nft cannot see, are read from
``iptables-legacy-save``.  Pure functions of NodeFacts, like every check.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

from flannelish.node.checks import Finding, Severity
from flannelish.node.facts import NodeFacts
from flannelish.node.nft_verdict import Packet, input_blocks

DEFAULT_VXLAN_PORT = 8472


def _peer_ips(facts: NodeFacts) -> list[IPv4Address] | None:
    if facts.leases is None:
        return None
    own, dev = facts.own_subnet(), facts.overlay()
    local = dev.local if dev else None
    return sorted(
        {
            lease.attrs.public_ip
            for lease in facts.leases
            if lease.subnet != own and lease.attrs.public_ip != local
        }
    )


def _tunnel_untracked(ruleset: Sequence[Any]) -> bool:
    """Our table's notrack chain for the tunnel's packets from peers is loaded."""
    return any(
        item.get("chain", {}).get("table") == "flannelish"
        and item["chain"].get("family") == "ip"
        and item["chain"].get("name") == "prerouting"
        for item in ruleset
    )


def check_firewall(facts: NodeFacts) -> list[Finding]:
    return _check_nft(facts) + check_legacy_iptables(facts)


def _check_nft(facts: NodeFacts) -> list[Finding]:
    if facts.ruleset is None:
        return [
            Finding(
                Severity.INFO,
                "firewall",
                f"nftables ruleset not readable ({facts.ruleset_error or 'nft missing'}); "
                "VXLAN port not checked",
            )
        ]
    out: list[Finding] = []
    dev = facts.overlay()
    if dev is not None:
        port = dev.port or DEFAULT_VXLAN_PORT
        ul = facts.underlay()
        peers = _peer_ips(facts)
        sources: Sequence[IPv4Address | None] = peers if peers else [None]
        seen: set[tuple[str, str, str, str]] = set()
        untracked = _tunnel_untracked(facts.ruleset)
        for src in sources:
            # A peer's VXLAN skips conntrack under our table (node/firewall.py): a
            # foreign rule admitting only `ct state new` would drop it.
            state = "untracked" if untracked and src is not None else "new"
            pkt = Packet("udp", port, saddr=src, daddr=dev.local,
                         iifname=ul.name if ul else None, ct_state=state)  # fmt: skip
            for block in input_blocks(facts.ruleset, pkt):
                ours = block.table == "flannelish" and block.family == "ip"
                if ours and src is None:
                    continue  # the anti-spoof rule drops unknown sources on purpose
                key = (block.family, block.table, block.chain, block.rule)
                if key in seen:
                    continue
                seen.add(key)
                who = f"from peer {src}" if src else "from peers"
                if ours:
                    out.append(
                        Finding(
                            Severity.ERROR,
                            "firewall",
                            f"VXLAN (udp/{port}) {who} is dropped by flannelish's own "
                            "anti-spoof rule: the peer is missing from set vxlan_peers",
                            "the daemon re-syncs the set every resync interval; if this "
                            "persists check its log, or run with --vxlan-allow-any",
                        )
                    )
                    continue
                verb = "is dropped" if block.certain else "may be dropped"
                out.append(
                    Finding(
                        Severity.ERROR if block.certain else Severity.WARNING,
                        "firewall",
                        f"VXLAN (udp/{port}) {who} {verb} by {block.where()}: "
                        "the overlay cannot carry pod traffic",
                        f"allow udp dport {port} from the nodes' addresses before that rule, "
                        f"e.g. `nft insert rule {block.family} {block.table} {block.chain} "
                        f"udp dport {port} accept`",
                    )
                )
    env = facts.subnet_env
    if env is not None and env.network is not None and env.subnet is not None:
        # A pod of ours talking to a pod of another node: any other subnet will do.
        inside = env.subnet.network_address + 2
        sibling = env.subnet.supernet() if env.subnet.prefixlen > env.network.prefixlen else None
        others = [s for s in (sibling.subnets() if sibling else []) if s != env.subnet]
        other = others[0].network_address + 2 if others else inside
        pkt = Packet("tcp", 80, saddr=IPv4Address(inside), daddr=IPv4Address(other))
        for block in input_blocks(facts.ruleset, pkt, hook="forward"):
            if block.table in ("flannelish", "flannelish-policy"):  # ours; policy drops on purpose
                continue
            verb = "is dropped" if block.certain else "may be dropped"
            out.append(
                Finding(
                    Severity.ERROR if block.certain else Severity.WARNING,
                    "firewall",
                    f"forwarded pod traffic ({env.network}) {verb} by {block.where()}; "
                    "flannelish's own forward accept cannot override another table's drop",
                    f"accept `ip saddr {env.network}` and `ip daddr {env.network}` in that chain",
                )
            )
    return out


def legacy_input_drops(save: str, port: int) -> list[tuple[str, bool]]:
    """(rule, certain) for iptables-legacy INPUT rules that drop or reject UDP to ``port``.

    These rules are invisible to nft.  Only the filter table's INPUT chain is
    read; a rule with extra conditions (source, interface, other matches)
    "may" drop, and a DROP policy is reported as "may" unless an earlier
    ACCEPT for the port exists.
    """
    out: list[tuple[str, bool]] = []
    policy_drop = False
    in_filter = False
    for line in save.splitlines():
        line = line.strip()
        if line.startswith("*"):
            in_filter = line == "*filter"
        if not in_filter:
            continue
        if line.startswith(":INPUT "):
            policy_drop = line.split()[1] == "DROP"
        if not line.startswith("-A INPUT "):
            continue
        words = line.split()
        target = words[words.index("-j") + 1] if "-j" in words else ""
        proto = words[words.index("-p") + 1] if "-p" in words else "all"
        if proto not in ("udp", "all", "17"):
            continue
        if "--dport" in words:
            spec = words[words.index("--dport") + 1]
            low, _, high = spec.partition(":")
            if not int(low or 0) <= port <= int(high or low or 65535):
                continue
        elif "--dports" in words:
            continue  # multiport lists: not modelled, keep quiet rather than guess
        extra = _extra_conditions(words)
        if target == "ACCEPT" and not extra:
            return out  # accepted before any later drop or the policy
        if target in ("DROP", "REJECT"):
            out.append((line, not extra))
            if not extra:
                return out  # the packet ends here
    if policy_drop:
        out.append((":INPUT DROP (policy)", False))
    return out


# Options that do not narrow "UDP to our port" (value-taking ones skip their value).
_PLAIN_OPTIONS = {"-A": 1, "-p": 1, "-m": 1, "--dport": 1, "-j": 1, "--reject-with": 1}


def _extra_conditions(words: list[str]) -> bool:
    i = 0
    while i < len(words):
        word = words[i]
        if word in _PLAIN_OPTIONS:
            i += 1 + _PLAIN_OPTIONS[word]
            continue
        if word.startswith("-") or word == "!":
            return True  # e.g. -s, -i, -m conntrack --ctstate: only some packets match
        i += 1
    return False


def check_legacy_iptables(facts: NodeFacts) -> list[Finding]:
    dev = facts.overlay()
    if dev is None or not facts.iptables_legacy:
        return []
    port = dev.port or DEFAULT_VXLAN_PORT
    return [
        Finding(
            Severity.ERROR if certain else Severity.WARNING,
            "firewall",
            f"VXLAN (udp/{port}) {'is' if certain else 'may be'} dropped by the iptables-legacy "
            f"rule `{rule}` (invisible to nft)",
            f"allow it first: `iptables-legacy -I INPUT -p udp --dport {port} -j ACCEPT`",
        )
        for rule, certain in legacy_input_drops(facts.iptables_legacy, port)
    ]
