"""Would this nftables ruleset drop a given packet on the input hook?  (for `doctor`)

Design
------
`flannelish doctor` must say "UDP 8472 from your peers is dropped by rule X
in table Y" rather than "check your firewall".  This module walks the JSON
of ``nft -j list ruleset`` the way the kernel walks a packet through the
base chains of one hook: every base chain of a matching family is traversed
(in priority order); within a chain rules are tried in order, ``jump`` and
``goto`` descend, the first terminal verdict ends the chain, and the chain
policy applies at its end.  A packet is dropped if *any* base chain drops
it (an ``accept`` only ends its own chain).

Only the expressions a firewall uses to admit or refuse a UDP port are
understood: l4 protocol, ports (``udp``/``th``), IPv4 addresses, prefixes,
ranges, anonymous and named sets, ``iifname``, ``ct state`` (the packet is
taken as ``new``).  Anything else makes the rule's match *unknown*: a drop
behind an unknown match is reported as "may drop", never hidden and never
asserted.  iptables-nft rules are nft rules and are covered; iptables-legacy
rules are not visible here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Any

MAX_DEPTH = 16  # jump nesting limit (the kernel's is 16 as well)
_FAMILIES_FOR_IPV4 = {"ip", "inet"}
# Statements that never make a rule skip a packet (verdicts are read separately).
_NEUTRAL = {"counter", "log", "accept", "drop", "reject", "return", "jump", "goto", "mangle",
            "notrack", "masquerade", "snat", "dnat", "comment"}  # fmt: skip


@dataclass(frozen=True)
class Packet:
    """The packet in question; None for a field means "any value" (unknown)."""

    l4proto: str = "udp"
    dport: int = 0
    sport: int | None = None
    saddr: IPv4Address | None = None
    daddr: IPv4Address | None = None
    iifname: str | None = None
    ct_state: str = "new"


@dataclass(frozen=True)
class Block:
    """A base chain that drops (or may drop) the packet, and the rule responsible."""

    family: str
    table: str
    chain: str
    certain: bool
    rule: str  # human description: "rule handle 4 (comment)" or "policy drop"

    def where(self) -> str:
        return f"table {self.family} {self.table}, chain {self.chain}, {self.rule}"


@dataclass
class _Ruleset:
    chains: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    sets: dict[tuple[str, str, str], list[Any]] = field(default_factory=dict)


def _index(items: Sequence[Mapping[str, Any]]) -> _Ruleset:
    rs = _Ruleset()
    for item in items:
        if "chain" in item:
            c = item["chain"]
            rs.chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            rs.rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
        elif "set" in item:
            s = item["set"]
            rs.sets[(s["family"], s["table"], s["name"])] = list(s.get("elem", []))
    return rs


def input_blocks(
    ruleset: Sequence[Mapping[str, Any]], packet: Packet, hook: str = "input"
) -> list[Block]:
    """Base chains on ``hook`` that drop the packet, certainly or possibly."""
    rs = _index(ruleset)
    blocks = []
    bases = [
        (key, c)
        for key, c in rs.chains.items()
        if c.get("hook") == hook and key[0] in _FAMILIES_FOR_IPV4
    ]
    for key, chain in sorted(bases, key=lambda kc: int(kc[1].get("prio", 0))):
        verdict, where, escaped = _walk(rs, key, packet, 0)
        if verdict in ("end", "return") and chain.get("policy") == "drop":
            verdict, where = "drop", "policy drop"
        if verdict == "drop":
            blocks.append(Block(key[0], key[1], key[2], not escaped, where))
        elif where:  # accepted, but a rule before might have dropped it
            blocks.append(Block(key[0], key[1], key[2], False, where))
    return blocks


def _describe(rule: Mapping[str, Any], depth: int) -> str:
    text = f"rule handle {rule.get('handle', '?')}"
    if depth:  # reached through a jump: name the chain the rule is really in
        text += f" of chain {rule.get('chain', '?')}"
    return f"{text} ({rule['comment']})" if rule.get("comment") else text


def _walk(
    rs: _Ruleset, key: tuple[str, str, str], pkt: Packet, depth: int
) -> tuple[str, str, bool]:
    """(verdict, where, escaped) with verdict in accept/drop/return/end.

    ``escaped`` is True once a rule with an unknown match that does not drop
    (an accept, a jump) was passed: the packet might have left that way, so
    a later drop is not certain.  ``where`` names the dropping rule, or for
    other verdicts the first rule that *might* have dropped the packet.
    """
    maybe_drop, escaped = "", False
    if depth > MAX_DEPTH:
        return "end", "", True
    for rule in rs.rules.get(key, []):
        matched = _match_rule(rs, key, rule, pkt)
        if matched is False:
            continue
        verdict, target = _verdict(rule)
        if verdict in ("jump", "goto") and target:
            if matched is None:
                escaped = True  # cannot tell whether we would enter it
                continue
            sub, where, sub_escaped = _walk(rs, (key[0], key[1], target), pkt, depth + 1)
            escaped |= sub_escaped
            if sub != "drop" and where:
                maybe_drop = maybe_drop or where
            if sub in ("accept", "drop"):
                return sub, where or maybe_drop, escaped
            if verdict == "goto":  # returning from a goto ends the calling chain too
                return "end", maybe_drop, escaped
            continue
        if verdict is None:
            continue
        if matched is None:
            if verdict == "drop":
                maybe_drop = maybe_drop or _describe(rule, depth)
            else:
                escaped = True
            continue
        if verdict == "drop":
            return "drop", _describe(rule, depth), escaped
        return verdict, maybe_drop, escaped  # accept or return
    return "end", maybe_drop, escaped


def _verdict(rule: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for expr in rule.get("expr", []):
        if not isinstance(expr, dict):
            continue
        if "accept" in expr:
            return "accept", None
        if "drop" in expr or "reject" in expr:
            return "drop", None
        if "return" in expr:
            return "return", None
        for kind in ("jump", "goto"):
            if kind in expr:
                return kind, (expr[kind] or {}).get("target")
    return None, None


def _match_rule(
    rs: _Ruleset, key: tuple[str, str, str], rule: Mapping[str, Any], pkt: Packet
) -> bool | None:
    result: bool | None = True
    for expr in rule.get("expr", []):
        if not isinstance(expr, dict):
            continue
        if "match" in expr:
            m = _match(rs, key, expr["match"], pkt)
        elif _NEUTRAL & expr.keys():
            continue
        else:
            m = None  # limit, quota, meter...: conditional in ways we do not model
        if m is False:
            return False
        if m is None:
            result = None
    return result


def _field(left: Any, pkt: Packet) -> tuple[str, Any] | None:
    """(kind, packet value) for a left-hand side we understand, else None."""
    if not isinstance(left, dict):
        return None
    if "payload" in left:
        p = left["payload"]
        proto, name = p.get("protocol"), p.get("field")
        if name in ("dport", "sport") and proto in ("udp", "tcp", "th", "sctp", "udplite"):
            if proto != "th" and proto != pkt.l4proto:
                return ("mismatch", None)
            return ("port", pkt.dport if name == "dport" else pkt.sport)
        if proto == "ip" and name in ("saddr", "daddr"):
            return ("addr", pkt.saddr if name == "saddr" else pkt.daddr)
        if proto == "ip" and name == "protocol":
            return ("proto", pkt.l4proto)
        return None
    if "meta" in left:
        k = left["meta"].get("key")
        if k == "l4proto":
            return ("proto", pkt.l4proto)
        if k == "protocol":  # the ethertype
            return ("proto", "ip")
        if k == "iifname":
            return ("name", pkt.iifname)
        if k == "nfproto":
            return ("proto", "ipv4")
        return None
    if "ct" in left and left["ct"].get("key") == "state":
        return ("ctstate", pkt.ct_state)
    return None


def _values(rs: _Ruleset, key: tuple[str, str, str], right: Any) -> list[Any] | None:
    if isinstance(right, str) and right.startswith("@"):
        elems = rs.sets.get((key[0], key[1], right[1:]))
        return None if elems is None else elems
    if isinstance(right, dict) and "set" in right:
        return list(right["set"])
    if isinstance(right, list):
        return right
    return [right]


def _one(kind: str, value: Any, elem: Any) -> bool | None:
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"].get("val")
    if kind == "port":
        if isinstance(elem, dict) and "range" in elem:
            low, high = elem["range"]
            return int(low) <= value <= int(high)
        return isinstance(elem, int) and elem == value
    if kind == "addr":
        try:
            if isinstance(elem, dict) and "prefix" in elem:
                net = ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
                return value in net
            if isinstance(elem, dict) and "range" in elem:
                low, high = (ip_address(x) for x in elem["range"])
                return low <= value <= high
            return isinstance(elem, str) and ip_address(elem) == value
        except (ValueError, TypeError):
            return None
    if kind in ("proto", "name", "ctstate"):
        return isinstance(elem, str | int) and str(elem) == str(value)
    return None


def _match(rs: _Ruleset, key: tuple[str, str, str], m: Mapping[str, Any], pkt: Packet):
    f = _field(m.get("left"), pkt)
    if f is None:
        return None
    kind, value = f
    if kind == "mismatch":
        return False
    if value is None:
        return None  # the packet field is unknown (e.g. any source)
    elems = _values(rs, key, m.get("right"))
    if elems is None:
        return None
    if kind == "addr" and not isinstance(value, IPv4Address | IPv4Network):
        return None
    hits = [_one(kind, value, e) for e in elems]
    if any(h is None for h in hits) and not any(hits):
        return None
    hit = any(hits)
    op = m.get("op", "==")
    if op in ("==", "in"):
        return hit
    if op == "!=":
        return not hit
    return None
