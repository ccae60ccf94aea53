"""Policies + endpoints -> named nft sets and O(policies) rules in ``table inet flannelish-policy``.

Every selector becomes a named set of addresses (pods selected by a policy on
this node; peers of each rule: the pods it selects anywhere in a plain set,
its ipBlocks minus their excepts as non-overlapping intervals in a set of
their own); named ports become ``addr . proto . port`` sets.  Interval sets
hold CIDRs only, never pods: nft reads the elements of every interval set in
the table before each transaction, so their size is the cost of every change.
The rules reference sets only, so a pod coming or going changes set elements,
never rules.  ``Compiled`` is a small IR: ``render()`` writes it as
one nft script and flannelish.policy.nftmodel evaluates it (the property test).

Chains (per family f of 4/6; "ip" is "ip6" for f=6)::

    forward (hook forward, priority filter - 10)
        ct state established,related accept         replies of allowed connections
        ip saddr @iso_eg_f jump egress_f             source isolated for egress
        meta nfproto ipvf goto ingress_check_f
    ingress_check_f:
        ip daddr @iso_in_f jump ingress_f            destination isolated for ingress
        accept
    egress_f:   jump egress_f_b<k> ... goto egress_f_drop    (one jump per non-empty bucket)
    egress_f_b<k>:  ip saddr @s_<p>_f jump peg_<p>_f         (the bucket's policies)
    peg_<p>_f:  ip daddr @r_<p>_eg<i>_f [ports] goto ingress_check_f   (per rule)
    egress_f_drop:  jump egress_f_drop_b<k> ... drop
    egress_f_drop_b<k>: ip saddr @s_<p>_f counter name drop_<p> drop
    ingress_f, ingress_f_b<k>, pin_<p>_f, ingress_f_drop...: the same with daddr/saddr
        swapped and accept for goto ingress_check_f

Compiling and rendering share this module (a little over ~450 lines): the IR
and its nft text change together, and the property test checks them as one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, collapse_addresses
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
    what: str  # "saddr" | "daddr" | "ports" | "daddr_port" | "established" | "nfproto"
    set: str = ""
    ports: tuple[tuple[str, int, int], ...] = ()
    family: int = 0  # nfproto: the packet's family


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


def block_elements(peers: tuple[Peer, ...], fam: int) -> frozenset[str]:
    """A rule's ipBlocks of one family minus their excepts, as non-overlapping intervals."""
    blocks: list[Any] = []
    for pe in peers:
        if pe.ip_block is not None and pe.ip_block.cidr.version == fam:
            blocks += _minus(pe.ip_block.cidr, pe.ip_block.except_)
    return _collapse(blocks)


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

    def pod_elements(self, peers: tuple[Peer, ...], policy_ns: str, fam: int) -> frozenset[str]:
        """Addresses of the pods a rule's pod peers select (a plain set: pods change often)."""
        key = (peers, policy_ns, fam)
        cached = self._elements.get(key)
        if cached is None:
            cached = frozenset(
                ip
                for pe in peers
                if pe.ip_block is None
                for ep in self.peer_pods(pe, policy_ns)
                for ip in ep.ips
                if _fam(ip) == fam
            )
            self._elements[key] = cached
        return cached

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


@dataclass
class Part:
    """One policy's share of the ruleset: its sets, their elements, its chains' rules."""

    key: str
    types: tuple[str, ...]
    sets: dict[str, SetDef]
    elements: dict[str, frozenset[str]]
    rules: tuple[NftRule, ...]


def compile_policy(
    ctx: _Ctx, policy: Policy, local: list[Endpoint], families: tuple[int, ...] = (4, 6)
) -> Part:
    """The sets and chains of one policy; the same inputs give equal parts."""
    pid = policy_id(policy.key)
    sets: dict[str, SetDef] = {}
    elements: dict[str, set[str]] = {}
    rules: list[NftRule] = []

    def add_set(name: str, fam: int, kind: str) -> str:
        sets[name] = SetDef(name, fam, kind)
        elements.setdefault(name, set())
        return name

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
            rules += _policy_chain(ctx, policy, pid, d, fam, selected, add_set, elements)
    return Part(
        policy.key,
        tuple(policy.policy_types),
        sets,
        {k: frozenset(v) for k, v in elements.items()},
        tuple(rules),
    )


def assemble(parts: list[Part], families: tuple[int, ...] = (4, 6)) -> Compiled:
    """The whole ruleset from the parts (in policy-key order) plus the dispatch chains.

    O(policies) rules and the isolation sets (the union of the selected sets):
    no endpoint is looked at again here.
    """
    sets: dict[str, SetDef] = {}
    elements: dict[str, frozenset[str]] = {}
    rules: list[NftRule] = []
    counters: dict[str, str] = {}
    iso: dict[str, set[str]] = {}
    for fam in families:
        for d in ("in", "eg"):
            name = f"iso_{d}_{fam}"
            sets[name] = SetDef(name, fam, "addr")
            iso[name] = set()
    for part in parts:
        pid = policy_id(part.key)
        counters[f"drop_{pid}"] = part.key
        sets.update(part.sets)
        elements.update(part.elements)
        rules += part.rules
        for fam in families:
            for direction in part.types:
                d = "in" if direction == "Ingress" else "eg"
                iso[f"iso_{d}_{fam}"] |= part.elements.get(f"s_{pid}_{fam}", frozenset())
    elements.update({k: frozenset(v) for k, v in iso.items()})
    for fam in families:
        rules += _dispatch_chains(parts, fam, first=fam == families[0])
    return Compiled(sets, elements, tuple(rules), counters)


def compile_policies(
    policies: list[Policy],
    endpoints: list[Endpoint],
    namespaces: dict[str, Namespace],
    node: str,
    families: tuple[int, ...] = (4, 6),
) -> Compiled:
    """From scratch (the reference the incremental compiler must equal)."""
    ctx = _Ctx(endpoints, namespaces)
    local = [e for e in endpoints if e.node == node]
    ordered = sorted(policies, key=lambda p: p.key)
    return assemble([compile_policy(ctx, p, local, families) for p in ordered], families)


def _policy_chain(
    ctx: _Ctx,
    policy: Policy,
    pid: str,
    d: str,
    fam: int,
    selected: list[Endpoint],
    add_set: Any,
    elements: dict[str, set[str]],
) -> list[NftRule]:
    """Chain p<d>_<pid>_<fam>: one rule per allowed (peers, ports) of one policy direction.

    Ingress allows ``accept``; egress allows ``goto ingress_check_<fam>`` (the
    destination's ingress is still to be checked).
    """
    chain = f"p{d}_{pid}_{fam}"
    other = "saddr" if d == "in" else "daddr"
    verdict = "accept" if d == "in" else f"goto ingress_check_{fam}"
    out: list[NftRule] = []
    for i, rule in enumerate(policy.ingress if d == "in" else policy.egress):
        # peers: pods in a plain set (its elements change as pods come and go), ipBlocks
        # in an interval set of their own (changes only with the policy: nft reads every
        # interval set's elements before a transaction, so they must stay small)
        variants: list[tuple[Cond, ...]] = []
        if not rule.peers:
            variants.append(())
        if any(pe.ip_block is None for pe in rule.peers):
            pods = add_set(f"r_{pid}_{d}{i}_{fam}", fam, "addr")
            elements[pods] = set(ctx.pod_elements(rule.peers, policy.namespace, fam))
            variants.append((Cond(other, pods),))
        if any(pe.ip_block is not None and pe.ip_block.cidr.version == fam for pe in rule.peers):
            blocks = add_set(f"b_{pid}_{d}{i}_{fam}", fam, "net")
            elements[blocks] = set(block_elements(rule.peers, fam))
            variants.append((Cond(other, blocks),))
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
        nset = ""
        if named:
            nset = add_set(f"n_{pid}_{d}{i}_{fam}", fam, "addrport")
            # the destination's named port: the selected pod (ingress) or the peer
            holders = selected if d == "in" else ctx.endpoints
            elements[nset] = {
                f"{ip} . {PROTO_NAMES[np.protocol]} . {np.port}"
                for e in holders
                for np in e.ports
                for spec in named
                if np.name == spec.port and np.protocol == spec.protocol
                for ip in e.ips
                if _fam(ip) == fam
            }
        for conds in variants:
            if not rule.ports:
                out.append(NftRule(chain, fam, conds, verdict))
            if numeric:
                out.append(NftRule(chain, fam, (*conds, Cond("ports", ports=numeric)), verdict))
            if nset:
                out.append(NftRule(chain, fam, (*conds, Cond("daddr_port", nset)), verdict))
    # an empty chain is still created (a policy with no rules: it only isolates)
    return out or [NftRule(chain, fam, (Cond("never"),), "return")]


BUCKETS = 16  # dispatch sub-chains per direction: a policy change rewrites one of them


def _bucket(pid: str) -> int:
    return int(pid, 16) % BUCKETS


def _dispatch_chains(ordered: list[Part], fam: int, first: bool = True) -> list[NftRule]:
    """forward, ingress_check and the per-direction dispatch, in BUCKETS sub-chains.

    A policy's jump and drop rules sit in the bucket its id hashes to, so adding
    or removing one refills that bucket (about policies/BUCKETS rules) instead
    of chains as long as the policy count: every change stays small.  The base
    chain sees both families: its rules name theirs (a set lookup does implicitly).
    """
    rules = [NftRule("forward", fam, (Cond("established"),), "accept")] if first else []
    rules += [
        NftRule("forward", fam, (Cond("saddr", f"iso_eg_{fam}"),), f"jump egress_{fam}"),
        NftRule("forward", fam, (Cond("nfproto", family=fam),), f"goto ingress_check_{fam}"),
        NftRule(
            f"ingress_check_{fam}", fam, (Cond("daddr", f"iso_in_{fam}"),), f"jump ingress_{fam}"
        ),
        NftRule(f"ingress_check_{fam}", fam, (), "accept"),
    ]
    for d, own in (("eg", "saddr"), ("in", "daddr")):
        chain = f"{'egress' if d == 'eg' else 'ingress'}_{fam}"
        buckets: dict[int, list[str]] = {}
        for p in ordered:
            if ("Ingress" if d == "in" else "Egress") in p.types:
                pid = policy_id(p.key)
                buckets.setdefault(_bucket(pid), []).append(pid)
        for b in sorted(buckets):
            rules.append(NftRule(chain, fam, (), f"jump {chain}_b{b}"))
            rules += [
                NftRule(
                    f"{chain}_b{b}", fam, (Cond(own, f"s_{pid}_{fam}"),), f"jump p{d}_{pid}_{fam}"
                )
                for pid in buckets[b]
            ]
        rules.append(NftRule(chain, fam, (), f"goto {chain}_drop"))
        for b in sorted(buckets):
            rules.append(NftRule(f"{chain}_drop", fam, (), f"jump {chain}_drop_b{b}"))
            rules += [
                NftRule(
                    f"{chain}_drop_b{b}", fam, (Cond(own, f"s_{pid}_{fam}"),), "drop", f"drop_{pid}"
                )
                for pid in buckets[b]
            ]
        rules.append(NftRule(f"{chain}_drop", fam, (), "drop"))
    return rules


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
    if c.what == "nfproto":
        return f"meta nfproto ipv{c.family}"
    if c.what == "never":  # a placeholder rule of an empty policy chain
        return "meta mark 0xffffffff meta mark != 0xffffffff"
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


def _chains(c: Compiled) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    for r in c.rules:
        chains.setdefault(r.chain, []).append(rule_text(r))
    return chains


def _set_text(name: str, s: SetDef, elems: frozenset[str]) -> str:
    body = f" elements = {{ {', '.join(sorted(elems))} }}" if elems else ""
    return f"set {name} {{ {set_type(s)}{body} }}"


BASE_CHAIN = "type filter hook forward priority filter - 10; policy accept;"


def render(c: Compiled) -> str:
    """The whole table as one script (create, then replace atomically)."""
    lines = [
        f"table {FAMILY} {TABLE} {{}}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]
    # the comment names the policy: doctor and `nft list` can tell whose drops these are
    lines += [f'  counter {n} {{ comment "{k}" }}' for n, k in sorted(c.counters.items())]
    lines += [
        f"  {_set_text(n, s, c.elements.get(n, frozenset()))}" for n, s in sorted(c.sets.items())
    ]
    chains = _chains(c)
    lines += ["  chain forward {", f"    {BASE_CHAIN}"]
    lines += [f"    {t}" for t in chains.pop("forward", [])]
    lines.append("  }")
    for chain in sorted(chains):
        lines.append(f"  chain {chain} {{")
        lines += [f"    {t}" for t in chains[chain]]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _by_chain(c: Compiled) -> dict[str, tuple[NftRule, ...]]:
    chains: dict[str, list[NftRule]] = {}
    for r in c.rules:
        chains.setdefault(r.chain, []).append(r)
    return {k: tuple(v) for k, v in chains.items()}


def render_delta(old: Compiled, new: Compiled) -> str | None:
    """One transaction from `old` to `new`: only what changed.

    New sets and chains are added, changed chains flushed and refilled (a
    policy's own chain, or the dispatch chains: O(policies) rules, no
    elements), removed ones deleted once nothing refers to them, and kept
    sets get element diffs.  None when the base chain changed (render()).
    Rules are compared as values and only changed chains are written out, so
    a change costs what it touches, not the size of the table.
    """
    t = f"{FAMILY} {TABLE}"
    before, after = _by_chain(old), _by_chain(new)
    if before.get("forward") != after.get("forward") or any(
        old.sets[n] != s for n, s in new.sets.items() if n in old.sets
    ):
        return None
    out = [
        f'add counter {t} {n} {{ comment "{new.counters[n]}" }}'
        for n in sorted(new.counters.keys() - old.counters.keys())
    ]
    for name in sorted(new.sets):
        elems = new.elements.get(name, frozenset())
        if name not in old.sets:
            out.append(
                f"add {_set_text(name, new.sets[name], elems).replace('set ', f'set {t} ', 1)}"
            )
            continue
        prev = old.elements.get(name, frozenset())
        if prev is elems:  # an untouched policy's set: the same object
            continue
        gone, added = sorted(prev - elems), sorted(elems - prev)
        if gone:
            out.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
        if added:
            out.append(f"add element {t} {name} {{ {', '.join(added)} }}")
    changed = sorted(c for c in after if c != "forward" and before.get(c) != after[c])
    removed = sorted(before.keys() - after.keys())
    out += [f"add chain {t} {c}" for c in changed if c not in before]
    out += [f"flush chain {t} {c}" for c in changed if c in before]
    out += [f"flush chain {t} {c}" for c in removed]
    for c in changed:
        out += [f"add rule {t} {c} {rule_text(r)}" for r in after[c]]
    out += [f"delete chain {t} {c}" for c in removed]
    out += [f"delete set {t} {n}" for n in sorted(old.sets.keys() - new.sets.keys())]
    out += [f"delete counter {t} {n}" for n in sorted(old.counters.keys() - new.counters.keys())]
    return "\n".join(out) + "\n" if out else ""
