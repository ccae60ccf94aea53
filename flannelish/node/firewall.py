"""flannelish's own nftables table: masquerade, forward-accept and VXLAN anti-spoofing.

Design
------
Everything lives in ONE table, ``table ip flannelish``; no other table or
chain is ever read-modified-written, so iptables-nft, firewalld or kube-proxy
rules are never touched.  The table is written with ``nft -f -`` as a single
transaction (create-if-missing, flush our chains, re-add), so the kernel
never sees a half-built rule set and re-applying is idempotent.

Chains (N = pod network, L = this node's subnet, P = VXLAN UDP port):

``postrouting`` (nat, srcnat) -- only with ``masq``; the iptables semantics
of docs/flannel-compat.md §9, in order::

    meta mark & 0x4000 == 0x4000 return     kube-proxy marked it: no double NAT
    ip saddr L ip daddr N return            local pods -> cluster keep pod IPs
    ip saddr N ip daddr L return            cluster -> local pods
    ip saddr != N ip daddr L return         outside -> local pods: no SNAT
    ip saddr N ip daddr != 224.0.0.0/4 masquerade fully-random   pods -> world
    ip saddr != N ip daddr N masquerade fully-random             host -> remote pods

  Upstream's nft mode writes the fourth rule as ``saddr != L daddr N``,
  which shadows the last rule; we keep the iptables form.

``forward`` (filter): ``ip saddr N accept``, ``ip daddr N accept``.  Note an
nft ``accept`` only ends *this* base chain: another table's drop on the same
hook (e.g. Docker's FORWARD policy DROP) still wins; `flannelish doctor`
reports such a policy.

``input`` (filter): ``udp dport P ip saddr != @vxlan_peers counter drop``.
The Linux vxlan driver decapsulates packets from any source, so without it
anyone on the underlay can inject frames into pods.  The named set
``vxlan_peers`` holds the peers' PublicIPs and is updated by element diffs,
never by flushing, so a peer change never opens a drop window for others.
The rule is *armed* only once the peers are known (the first
:meth:`NftRules.set_peers` call, or ``NftOwner.arm()``): applying the table
before the daemon knows its peers must not black-hole peer traffic (e.g.
across a daemon restart).  ``allow_any_vxlan`` leaves the rule out.

``prerouting`` / ``output`` (filter, priority raw): ``udp dport P ip saddr
@vxlan_peers notrack`` / ``... ip daddr @vxlan_peers notrack``: VXLAN is
one-way UDP, so conntrack only ever held UNREPLIED entries for the tunnel (a
lookup and insert per packet on both nodes, entries that fill the table);
Calico's Felix and OpenShift SDN skip it for their VXLAN port the same way.
The anti-spoof rule is stateless and the masquerade rules never match outer
packets; inner pod packets stay tracked (docs/flannel-compat.md §9).
``notrack=False`` leaves the two chains out.

IPv6 (dual stack or IPv6-only: ``network6``/``subnet6``): the same chains,
rules (``ip6 saddr``/``ip6 daddr``, multicast ``ff00::/8``) and set
(``vxlan_peers`` of type ipv6_addr, the peers' PublicIPv6: the IPv6 tunnel
runs over the IPv6 underlay) in ``table ip6 flannelish``, the same name in the
ip6 family, written in the same transaction; never a pod-to-pod NAT in either
family.  ``network=None`` (IPv6-only) leaves ``table ip flannelish`` out.  In
the combined listing (:class:`TableState`) the ip6 table's chains are keyed
``"ip6 <chain>"``.

Two ways to drive it: standalone (``apply``/``set_peers``/``ensure``/
``remove``), or as an Owner of the daemon's reconciler
(flannelish.node.firewall_owner.NftOwner), where the peer set is diffed
element by element like any kernel object.  This module holds the desired
state, its rendering into one nft transaction and the parsing of ``nft -j``
listings; nft itself is run through flannelish.kernel.nft.

A little over the usual ~450 lines: the desired rules, their one-transaction
rendering and the parsing of the listing are one contract (what ``present``
compares is what ``render`` writes), so they stay together.

Every rule carries a comment "<purpose> #<digest of the rule text>";
:meth:`NftRules.present` compares the per-chain comment lists (and, when
managed here, the set elements) with the desired state, which
is what the reconciler's re-assert needs (a deleted table, chain or rule is
detected; re-applying restores it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from flannelish.errors import ConfigError
from flannelish.kernel.nft import NftCli, NftRunner
from flannelish.kernel.nftset import SetElements

FAMILY = "ip"
FAMILY6 = "ip6"
FAMILIES = (FAMILY, FAMILY6)
TABLE = "flannelish"
PEER_SET = "vxlan_peers"
REJECT_COUNTER_CHAIN = "input"
KUBE_PROXY_MARK = 0x4000
DEFAULT_VXLAN_PORT = 8472

_CHAIN_SPECS = {
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    "forward": "type filter hook forward priority filter; policy accept;",
    "prerouting": "type filter hook prerouting priority raw; policy accept;",
    "output": "type filter hook output priority raw; policy accept;",
    # Last: it is created when the drop rule arms, so a restored table lists alike.
    "input": "type filter hook input priority filter; policy accept;",
}


PeerIP = IPv4Address | IPv6Address
_ADDR_TYPE = {FAMILY: "ipv4_addr", FAMILY6: "ipv6_addr"}
_MULTICAST = {FAMILY: "224.0.0.0/4", FAMILY6: "ff00::/8"}


def chain_key(family: str, chain: str) -> str:
    """A chain's key in TableState.chains / desired_chains(): ip6 chains get a prefix."""
    return chain if family == FAMILY else f"{family} {chain}"


def family_of(ip: PeerIP) -> str:
    return FAMILY if ip.version == 4 else FAMILY6


@dataclass(frozen=True)
class Rule:
    chain: str
    body: str  # nft rule text without the comment
    label: str  # what the rule is for
    family: str = FAMILY

    @property
    def key(self) -> str:
        return chain_key(self.family, self.chain)

    @property
    def comment(self) -> str:
        # The digest makes a rule edited in place (or written for another
        # subnet) differ from the desired one, so present() notices it.
        digest = hashlib.sha256(self.body.encode()).hexdigest()[:8]
        return f"{self.label} #{digest}"


@dataclass
class TableState:
    """What the kernel has in our table (parsed from ``nft -j``)."""

    chains: dict[str, list[str]] = field(default_factory=dict)  # chain -> rule comments
    peers: set[PeerIP] = field(default_factory=set)
    has_set: bool = False
    rejected_packets: int = 0

    def merge(self, other: TableState) -> TableState:
        """The combined view of two families' tables (has_set: both have their set)."""
        return TableState(
            {**self.chains, **other.chains},
            self.peers | other.peers,
            self.has_set and other.has_set,
            self.rejected_packets + other.rejected_packets,
        )


def parse_table(items: Sequence[dict[str, Any]], family: str = FAMILY) -> TableState:
    state = TableState()
    for item in items:
        if "chain" in item:
            state.chains.setdefault(chain_key(family, item["chain"]["name"]), [])
        elif "set" in item and item["set"].get("name") == PEER_SET:
            state.has_set = True
            for elem in item["set"].get("elem", []):
                # Plain sets list strings; sets with per-element data wrap them.
                value = elem["elem"]["val"] if isinstance(elem, dict) else elem
                state.peers.add(ip_address(value))
        elif "rule" in item:
            rule = item["rule"]
            key = chain_key(family, rule["chain"])
            state.chains.setdefault(key, []).append(rule.get("comment", ""))
            if rule["chain"] == REJECT_COUNTER_CHAIN:
                for expr in rule.get("expr", []):
                    if "counter" in expr and isinstance(expr["counter"], dict):
                        state.rejected_packets += int(expr["counter"].get("packets", 0))
    return state


class NftRules:
    """Desired state of ``table ip flannelish`` and the operations to impose it.

    Thread-safety: callers serialise calls (the daemon's reconciler thread).
    """

    def __init__(
        self,
        network: IPv4Network | str | None,
        subnet: IPv4Network | str | None,
        vxlan_port: int | None = DEFAULT_VXLAN_PORT,
        masq: bool = False,
        allow_any_vxlan: bool = False,
        *,
        network6: IPv6Network | str | None = None,
        subnet6: IPv6Network | str | None = None,
        forward: bool = True,
        masq_host_to_pods: bool = True,
        fully_random: bool = True,
        notrack: bool = True,
        runner: NftRunner | None = None,
        elements: SetElements | None = None,
    ) -> None:
        self.network: IPv4Network | None
        self.subnet: IPv4Network | None
        self.network6: IPv6Network | None
        self.subnet6: IPv6Network | None
        self.network, self.subnet = _pair(network, subnet, IPv4Network, "IPv4")
        self.network6, self.subnet6 = _pair(network6, subnet6, IPv6Network, "IPv6")
        if self.network is None and self.network6 is None:
            raise ConfigError("nftables rules need an IPv4 or an IPv6 network")
        if vxlan_port is not None and not 1 <= int(vxlan_port) <= 65535:
            raise ConfigError("VXLAN port out of range 1..65535", str(vxlan_port))
        # None: no VXLAN on this node (host-gw), so there is nothing to protect.
        self.vxlan_port = int(vxlan_port) if vxlan_port is not None else None
        self.masq = masq
        self.allow_any_vxlan = allow_any_vxlan
        self.forward = forward
        self.masq_host_to_pods = masq_host_to_pods
        self.fully_random = fully_random
        self.notrack = notrack
        self.runner: NftRunner = runner or NftCli()
        # The peer sets' elements over nfnetlink (no nft process per peer change and
        # no JSON listing of every element); None: through the runner, like the rest.
        self.elements = elements
        self._peers: frozenset[PeerIP] | None = None  # None: elements not managed here
        self._armed = False

    @property
    def families(self) -> tuple[str, ...]:
        """The nft families with a table: ip (IPv4 network), ip6 (IPv6 network)."""
        return tuple(
            f for f, net in ((FAMILY, self.network), (FAMILY6, self.network6)) if net is not None
        )

    # -- desired state -------------------------------------------------------

    @property
    def armed(self) -> bool:
        """True when the anti-spoof drop rule is part of the desired state."""
        return self.vxlan_port is not None and not self.allow_any_vxlan and self._armed

    def arm(self) -> None:
        """Include the drop rule from now on (the next apply/ensure writes it)."""
        self._armed = True

    @property
    def peers(self) -> frozenset[PeerIP]:
        return self._peers or frozenset()

    def rules(self) -> list[Rule]:
        """Every rule of every family's table, IPv4's first."""
        out: list[Rule] = []
        for fam in self.families:
            out += self._family_rules(fam)
        return out

    def _family_rules(self, fam: str) -> list[Rule]:
        n, lsub = (self.network, self.subnet) if fam == FAMILY else (self.network6, self.subnet6)
        out: list[Rule] = []
        if self.masq:
            rnd = " fully-random" if self.fully_random else ""
            mark = f"0x{KUBE_PROXY_MARK:x}"
            mcast = _MULTICAST[fam]
            nat = [
                (f"meta mark & {mark} == {mark} return", "masq: kube-proxy mark"),
                (f"{fam} saddr {lsub} {fam} daddr {n} return", "masq: pods to cluster"),
                (f"{fam} saddr {n} {fam} daddr {lsub} return", "masq: cluster to pods"),
                (f"{fam} saddr != {n} {fam} daddr {lsub} return", "masq: to local pods"),
                (f"{fam} saddr {n} {fam} daddr != {mcast} masquerade{rnd}", "masq: pods to world"),
            ]
            if self.masq_host_to_pods:
                nat.append(
                    (f"{fam} saddr != {n} {fam} daddr {n} masquerade{rnd}", "masq: host to pods")
                )
            out += [Rule("postrouting", body, comment, fam) for body, comment in nat]
        if self.forward:
            out += [
                Rule("forward", f"{fam} saddr {n} accept", "forward: from pods", fam),
                Rule("forward", f"{fam} daddr {n} accept", "forward: to pods", fam),
            ]
        if self.vxlan_port is not None and self.notrack:
            for chain, side, way in (("prerouting", "saddr", "from"), ("output", "daddr", "to")):
                body = f"udp dport {self.vxlan_port} {fam} {side} @{PEER_SET} notrack"
                out.append(Rule(chain, body, f"notrack: vxlan {way} peers", fam))
        if self.armed:
            out.append(
                Rule(
                    "input",
                    f"udp dport {self.vxlan_port} {fam} saddr != @{PEER_SET} counter drop",
                    "anti-spoof: vxlan from non-peers",
                    fam,
                )
            )
        return out

    def desired_chains(self) -> dict[str, list[str]]:
        chains: dict[str, list[str]] = {}
        for rule in self.rules():
            chains.setdefault(rule.key, []).append(rule.comment)
        return chains

    def armed_chains(self) -> dict[str, list[str]]:
        """desired_chains() as they are once the drop rule is armed (start-up adoption)."""
        was, self._armed = self._armed, True
        try:
            return self.desired_chains()
        finally:
            self._armed = was

    def render(self, seed: Iterable[PeerIP] = ()) -> str:
        """The full idempotent transaction for ``nft -f -``; ``seed``: more set elements."""
        peers = self.peers | frozenset(seed)
        wanted = self.desired_chains()
        lines = []
        for fam in self.families:
            t = f"{fam} {TABLE}"
            lines += [f"add table {t}", f"add set {t} {PEER_SET} {{ type {_ADDR_TYPE[fam]}; }}"]
            mine = [ip for ip in peers if family_of(ip) == fam]
            if mine:
                lines.append(f"add element {t} {PEER_SET} {{ {set_elements(mine)} }}")
            for chain, spec in _CHAIN_SPECS.items():
                # add+flush works whether or not the chain exists; a chain we no
                # longer want is then deleted (nft 1.0.6 has no `destroy`).
                lines += [f"add chain {t} {chain} {{ {spec} }}", f"flush chain {t} {chain}"]
                if chain_key(fam, chain) not in wanted:
                    lines.append(f"delete chain {t} {chain}")
            for rule in self._family_rules(fam):
                lines.append(f'add rule {t} {rule.chain} {rule.body} comment "{rule.comment}"')
        return "\n".join(lines) + "\n"

    # -- operations ----------------------------------------------------------

    def state(self, with_peers: bool = True) -> TableState | None:
        """Our tables as the kernel has them (one listing per family); None if one is absent.

        ``with_peers=False``: without the set's elements (``nft -t``), for a check
        of the chains and rules that need not read every peer."""
        combined: TableState | None = None
        for fam in self.families:
            items = self.runner.listing("table", fam, TABLE, terse=not with_peers)
            if items is None:
                return None
            state = parse_table(items, fam)
            combined = state if combined is None else combined.merge(state)
        return combined

    def apply(self, seed: Iterable[PeerIP] = ()) -> None:
        """Create or restore the whole table in one transaction (idempotent).

        ``seed``: set elements written in the same transaction (the peers the
        reconciler wants), so a restored drop rule never meets an empty set.
        """
        self.runner.run(self.render(seed))

    def present(self) -> bool:
        """True if the kernel's table matches the desired state exactly."""
        return self.matches(self.checked_state())

    def checked_state(self) -> TableState | None:
        """state() as matches() needs it: the set's elements only where this object
        manages them (set_peers); otherwise a reconciler owns them and diffs them."""
        return self.state(with_peers=self._peers is not None)

    def peer_elements(self) -> set[PeerIP] | None:
        """Every family's peer set as the kernel has it; None if a table or set is absent."""
        if self.elements is None:
            state = self.state()
            return set(state.peers) if state is not None and state.has_set else None
        out: set[PeerIP] = set()
        for fam in self.families:
            found = self.elements.read(fam, TABLE, PEER_SET)
            if found is None:
                return None
            out |= found
        return out

    def change_elements(self, verb: str, ips: Iterable[PeerIP]) -> None:
        """Add (``verb="add"``) or delete elements, each in its family's set."""
        ips = list(ips)
        if self.elements is None:
            self.runner.run("\n".join(element_changes(verb, ips)) + "\n")
            return
        write = self.elements.add if verb == "add" else self.elements.delete
        for fam in FAMILIES:
            mine = [ip for ip in ips if family_of(ip) == fam]
            if mine:
                write(fam, TABLE, PEER_SET, mine)

    def matches(self, state: TableState | None) -> bool:
        """present() on a listing the caller already has (None: table absent)."""
        if state is None or not state.has_set:
            return False
        if state.chains != self.desired_chains():
            return False
        return self._peers is None or state.peers == self._peers

    def ensure(self, seed: Iterable[PeerIP] = ()) -> bool:
        """Re-assert for the reconciler: apply if anything is missing. True if it repaired."""
        if self.present():
            return False
        self.apply(seed)
        return True

    def set_peers(self, ips: Iterable[PeerIP | str]) -> None:
        """Make ``vxlan_peers`` hold exactly these PublicIPs / PublicIPv6s (arms the drop rule).

        Only the difference is written, in one transaction; each address goes
        to its family's table (addresses of a family without a table are
        ignored).  If a table is absent the new set is just remembered: the
        next apply() writes it.
        """
        try:
            new = frozenset(
                a for a in (ip_address(str(ip)) for ip in ips) if family_of(a) in self.families
            )
        except ValueError as exc:
            raise ConfigError("invalid peer PublicIP", str(exc)) from None
        arming = not self._armed
        self._peers = new
        self._armed = True
        state = self.state()
        if state is None:
            return
        if not state.has_set or arming or state.chains != self.desired_chains():
            self.apply()
            return
        lines = element_changes("add", new - state.peers) + element_changes(
            "delete", state.peers - new
        )
        if lines:
            self.runner.run("\n".join(lines) + "\n")

    def rejected_packets(self) -> int:
        """Packets dropped by the anti-spoof rule so far (0 if absent)."""
        state = self.state()
        return state.rejected_packets if state else 0

    def remove(self) -> None:
        """Delete our tables (clean shutdown); absent already is fine."""
        for fam in self.families:
            if self.runner.listing("table", fam, TABLE) is not None:
                self.runner.run(f"delete table {fam} {TABLE}\n")


def _pair(network: object, subnet: object, kind: type, name: str) -> tuple[Any, Any]:
    """A family's (network, subnet), checked; (None, None) when that family is off."""
    if network is None and subnet is None:
        return None, None
    try:
        net, sub = ip_network(str(network)), ip_network(str(subnet))
    except ValueError as exc:
        raise ConfigError("invalid network for the nftables rules", str(exc)) from None
    if not isinstance(net, kind) or not isinstance(sub, kind):
        raise ConfigError(
            f"expected {name} networks for the nftables rules", f"{network}, {subnet}"
        )
    if not sub.subnet_of(net):  # type: ignore[arg-type]
        raise ConfigError(f"subnet {sub} is not inside network {net}")
    return net, sub


def set_elements(ips: Iterable[PeerIP]) -> str:
    """The addresses as the element list of an nft set statement, sorted."""
    return ", ".join(str(ip) for ip in sorted(ips, key=lambda a: (a.version, int(a))))


def element_changes(verb: str, ips: Iterable[PeerIP]) -> list[str]:
    """``<verb> element`` statements for the peer sets, one per family that has any."""
    ips = list(ips)
    lines = []
    for fam in FAMILIES:
        mine = [ip for ip in ips if family_of(ip) == fam]
        if mine:
            lines.append(f"{verb} element {fam} {TABLE} {PEER_SET} {{ {set_elements(mine)} }}")
    return lines


def parse_port(value: Any) -> int:
    """A VXLAN port from config (0 or missing means the kernel default 8472)."""
    try:
        port = int(value or 0)
    except (TypeError, ValueError):
        raise ConfigError("VXLAN port is not a number", repr(value)) from None
    if not 0 <= port <= 65535:
        raise ConfigError("VXLAN port out of range 0..65535", str(port))
    return port or DEFAULT_VXLAN_PORT


__all__ = [
    "FAMILIES",
    "FAMILY",
    "FAMILY6",
    "PEER_SET",
    "TABLE",
    "NftRules",
    "TableState",
    "element_changes",
    "parse_port",
    "parse_table",
    "set_elements",
]
