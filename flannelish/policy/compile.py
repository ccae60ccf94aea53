"""Policies + endpoints -> named nft sets and O(policies) rules in ``table inet flannelish-policy``.

Every selector becomes a named set of addresses (pods selected by a policy on
this node; peers of each rule: pods anywhere, ipBlocks minus their excepts,
as non-overlapping intervals); named ports become ``addr . proto . port``
sets.  The rules reference sets only, so a pod coming or going changes set
elements, never rules.  ``Compiled`` is a small IR: ``render()`` writes it as
one nft script and flannelish.policy.nftmodel evaluates it (the property test).

Chains (per family f of 4/6)::

    forward (hook forward, priority filter - 10)
        ct state established,related accept       replies of allowed connections
        ip saddr @iso_eg_f jump egress_f            source isolated for egress
        ip daddr @iso_in_f jump ingress_f           destination isolated for ingress
    egress_f:  ip saddr @sel ip daddr @peers [ports] return   (per policy rule)
               ip saddr @sel counter name drop_<p> drop       (per policy)
    ingress_f: ip daddr @sel ip saddr @peers [ports] accept   (per policy rule)
               ip daddr @sel counter name drop_<p> drop
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, collapse_addresses, ip_address
from typing import Any

from .model import Endpoint, LabelSelector, Namespace, Peer, Policy, namespace_labels

TABLE = "flannelish-policy"
FAMILY = "inet"
PROTO_NAMES = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}


@dataclass(frozen=True)
class SetDef:
    name: str
    family: int
    kind: str  # "addr" (exact), "net" (intervals), "addrport" (addr . proto . port)


@dataclass(frozen=True)
class Cond:
    what: str  # "saddr" | "daddr" | "ports" | "daddr_port" | "established"
    set: str = ""
    ports: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class NftRule:
    chain: str
    family: int
    conds: tuple[Cond, ...]
    verdict: str  # accept | drop | return | jump <chain>
    counter: str = ""


@dataclass
class Compiled:
    sets: dict[str, SetDef]
    elements: dict[str, frozenset[str]]
    rules: tuple[NftRule, ...]
    counters: dict[str, str]  # counter name -> policy key

    @property
    def structure(self) -> tuple:
        return (tuple(sorted(self.sets.items())), self.rules, tuple(sorted(self.counters)))


def policy_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:10]


@lru_cache(maxsize=65536)
def _matches(selector: LabelSelector, labels: tuple[tuple[str, str], ...]) -> bool:
    return selector.matches(dict(labels))


def _fam(ip: str) -> int:
    return 6 if ":" in ip else 4


@lru_cache(maxsize=262144)
def _int(ip: str) -> int:
    return int(ip_address(ip))


def _collapse(nets: list[IPv4Network | IPv6Network]) -> frozenset[str]:
    out = set()
    for net in collapse_addresses(nets):  # type: ignore[type-var]
        full = net.prefixlen == net.max_prefixlen
        out.add(str(net.network_address) if full else str(net))
    return frozenset(out)


class _Ctx:
    def __init__(self, endpoints: list[Endpoint], namespaces: dict[str, Namespace]) -> None:
        self.endpoints = endpoints
        self.namespaces = namespaces
        self._elements: dict[tuple, frozenset[str]] = {}
        self._pods: dict[tuple, list[Endpoint]] = {}
        self.ns_labels = {
            ns: tuple(sorted(namespace_labels(namespaces, ns).items()))
            for ns in {e.namespace for e in endpoints}
        }

    def peer_elements(self, peers: tuple[Peer, ...], policy_ns: str, fam: int) -> frozenset[str]:
        """Addresses of a rule's peers: pods' and ipBlocks' (non-overlapping elements)."""
        key = (peers, policy_ns, fam)
        cached = self._elements.get(key)
        if cached is not None:
            return cached
        blocks: list[Any] = []
        pod_ips: set[str] = set()
        for pe in peers:
            if pe.ip_block is not None:
                if pe.ip_block.cidr.version == fam:
                    blocks += _minus(pe.ip_block.cidr, pe.ip_block.except_)
            else:
                for ep in self.peer_pods(pe, policy_ns):
                    pod_ips.update(ip for ip in ep.ips if _fam(ip) == fam)
        if blocks:
            out = set(_collapse(blocks))
            ranges = [(int(n.network_address), int(n.broadcast_address)) for n in blocks]
            out |= {ip for ip in pod_ips if not any(lo <= _int(ip) <= hi for lo, hi in ranges)}
            result = frozenset(out)
        else:
            result = frozenset(pod_ips)
        self._elements[key] = result
        return result

    def peer_pods(self, peer: Peer, policy_ns: str) -> list[Endpoint]:
        key = (peer, policy_ns)
        cached = self._pods.get(key)
        if cached is not None:
            return cached
        out = self._peer_pods(peer, policy_ns)
        self._pods[key] = out
        return out

    def _peer_pods(self, peer: Peer, policy_ns: str) -> list[Endpoint]:
        out = []
        for ep in self.endpoints:
            if peer.namespace_selector is not None:
                if not _matches(peer.namespace_selector, self.ns_labels[ep.namespace]):
                    continue
            elif ep.namespace != policy_ns:
                continue
            if peer.pod_selector is None or _matches(peer.pod_selector, ep.labels):
                out.append(ep)
        return out


def compile_policies(
    policies: list[Policy],
    endpoints: list[Endpoint],
    namespaces: dict[str, Namespace],
    node: str,
    families: tuple[int, ...] = (4, 6),
) -> Compiled:
    ctx = _Ctx(endpoints, namespaces)
    local = [e for e in endpoints if e.node == node]
    sets: dict[str, SetDef] = {}
    elements: dict[str, set[str]] = {}
    rules: list[NftRule] = []
    counters: dict[str, str] = {}
    chain_rules: dict[str, list[NftRule]] = {}

    def add_set(name: str, fam: int, kind: str) -> str:
        sets[name] = SetDef(name, fam, kind)
        elements.setdefault(name, set())
        return name

    for fam in families:
        add_set(f"iso_in_{fam}", fam, "addr")
        add_set(f"iso_eg_{fam}", fam, "addr")
        chain_rules[f"egress_{fam}"] = []
        chain_rules[f"ingress_{fam}"] = []
    for policy in sorted(policies, key=lambda p: p.key):
        pid = policy_id(policy.key)
        counters[f"drop_{pid}"] = policy.key
        selected = [
            e
            for e in local
            if e.namespace == policy.namespace and _matches(policy.pod_selector, e.labels)
        ]
        for fam in families:
            sel = add_set(f"s_{pid}_{fam}", fam, "addr")
            elements[sel] |= {ip for e in selected for ip in e.ips if _fam(ip) == fam}
            for direction in policy.policy_types:
                d = "in" if direction == "Ingress" else "eg"
                elements[f"iso_{d}_{fam}"] |= elements[sel]
                chain = f"ingress_{fam}" if d == "in" else f"egress_{fam}"
                own, other = ("daddr", "saddr") if d == "in" else ("saddr", "daddr")
                verdict = "accept" if d == "in" else "return"
                rule_list = policy.ingress if d == "in" else policy.egress
                for i, rule in enumerate(rule_list):
                    conds: list[Cond] = [Cond(own, sel)]
                    if rule.peers:
                        peers = add_set(f"r_{pid}_{d}{i}_{fam}", fam, "net")
                        elements[peers] = set(ctx.peer_elements(rule.peers, policy.namespace, fam))
                        conds.append(Cond(other, peers))
                    numeric = tuple(
                        (
                            PROTO_NAMES[p.protocol],
                            p.port if p.port is not None else 0,
                            (p.end_port or p.port) if p.port is not None else 65535,
                        )
                        for p in rule.ports
                        if not isinstance(p.port, str)
                    )
                    named = [p for p in rule.ports if isinstance(p.port, str)]
                    if not rule.ports:
                        chain_rules[chain].append(NftRule(chain, fam, tuple(conds), verdict))
                    if numeric:
                        chain_rules[chain].append(
                            NftRule(chain, fam, (*conds, Cond("ports", ports=numeric)), verdict)
                        )
                    if named:
                        nset = add_set(f"n_{pid}_{d}{i}_{fam}", fam, "addrport")
                        # the destination's named port: the selected pod (ingress) or the peer
                        holders = selected if d == "in" else endpoints
                        elements[nset] = {
                            f"{ip} . {PROTO_NAMES[np.protocol]} . {np.port}"
                            for e in holders
                            for np in e.ports
                            for spec in named
                            if np.name == spec.port and np.protocol == spec.protocol
                            for ip in e.ips
                            if _fam(ip) == fam
                        }
                        chain_rules[chain].append(
                            NftRule(chain, fam, (*conds, Cond("daddr_port", nset)), verdict)
                        )
    for fam in families:
        rules.append(NftRule("forward", fam, (Cond("established"),), "accept"))
        rules.append(
            NftRule("forward", fam, (Cond("saddr", f"iso_eg_{fam}"),), f"jump egress_{fam}")
        )
        rules.append(
            NftRule("forward", fam, (Cond("daddr", f"iso_in_{fam}"),), f"jump ingress_{fam}")
        )
        for d, chain, own in (("eg", f"egress_{fam}", "saddr"), ("in", f"ingress_{fam}", "daddr")):
            rules += chain_rules[chain]
            for policy in sorted(policies, key=lambda p: p.key):
                dname = "Ingress" if d == "in" else "Egress"
                if dname in policy.policy_types:
                    pid = policy_id(policy.key)
                    rules.append(
                        NftRule(chain, fam, (Cond(own, f"s_{pid}_{fam}"),), "drop", f"drop_{pid}")
                    )
            rules.append(NftRule(chain, fam, (), "drop"))
    return Compiled(sets, {k: frozenset(v) for k, v in elements.items()}, tuple(rules), counters)


def _minus(cidr: IPv4Network | IPv6Network, excepts: tuple) -> list[Any]:
    nets: list[Any] = [cidr]
    for e in excepts:
        nxt: list[Any] = []
        for n in nets:
            if e.version == n.version and e.subnet_of(n):
                nxt += list(n.address_exclude(e))
            elif e.version == n.version and n.subnet_of(e):
                continue
            else:
                nxt.append(n)
        nets = nxt
    return nets


# -- rendering -------------------------------------------------------------------


def _cond_text(c: Cond, fam: int) -> str:
    ip = _IP[fam]
    if c.what == "established":
        return "ct state established,related"
    if c.what in ("saddr", "daddr"):
        return f"{ip} {c.what} @{c.set}"
    if c.what == "daddr_port":
        return f"{ip} daddr . meta l4proto . th dport @{c.set}"
    items = ", ".join(f"{p} . {lo}" if lo == hi else f"{p} . {lo}-{hi}" for p, lo, hi in c.ports)
    return f"meta l4proto . th dport {{ {items} }}"


def rule_text(r: NftRule) -> str:
    parts = [_cond_text(c, r.family) for c in r.conds]
    if r.counter:
        parts.append(f'counter name "{r.counter}"')
    parts.append(r.verdict)
    return " ".join(parts)


def set_type(s: SetDef) -> str:
    if s.kind == "addrport":
        return f"type {_ADDR_TYPE[s.family]} . inet_proto . inet_service;"
    if s.kind == "net":
        return f"type {_ADDR_TYPE[s.family]}; flags interval;"
    return f"type {_ADDR_TYPE[s.family]};"


def render(c: Compiled) -> str:
    """The whole table as one script (create, then replace atomically)."""
    lines = [
        f"table {FAMILY} {TABLE} {{}}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]
    for name in sorted(c.counters):
        lines.append(f"  counter {name} {{}}")
    for name, s in sorted(c.sets.items()):
        elems = sorted(c.elements.get(name, ()))
        body = f" elements = {{ {', '.join(elems)} }}" if elems else ""
        lines.append(f"  set {name} {{ {set_type(s)}{body} }}")
    lines.append("  chain forward {")
    lines.append("    type filter hook forward priority filter - 10; policy accept;")
    chains: dict[str, list[str]] = {}
    for r in c.rules:
        chains.setdefault(r.chain, []).append(rule_text(r))
    lines += [f"    {t}" for t in chains.pop("forward", [])]
    lines.append("  }")
    for chain in sorted({r.chain for r in c.rules if r.chain != "forward"}):
        lines.append(f"  chain {chain} {{")
        lines += [f"    {t}" for t in chains.get(chain, [])]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delta(old: Compiled, new: Compiled) -> str | None:
    """Element changes only, or None when the structure changed (render() then)."""
    if old.structure != new.structure:
        return None
    out = []
    for name in sorted(new.sets):
        before, after = old.elements.get(name, frozenset()), new.elements.get(name, frozenset())
        gone, added = sorted(before - after), sorted(after - before)
        if gone:
            out.append(f"delete element {FAMILY} {TABLE} {name} {{ {', '.join(gone)} }}")
        if added:
            out.append(f"add element {FAMILY} {TABLE} {name} {{ {', '.join(added)} }}")
    return "\n".join(out) + "\n" if out else ""
