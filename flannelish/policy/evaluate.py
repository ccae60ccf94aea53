"""The reference verdict: what Kubernetes NetworkPolicy semantics allow, and why.

A pod selected by no policy of a direction is open in that direction; once
selected, a connection must be allowed by some rule of some selecting policy,
on the source's egress side and on the destination's ingress side.  A pod
always reaches itself; replies of allowed connections pass (conntrack, not
modelled here: this decides the first packet).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address

from .model import Endpoint, Namespace, Policy, Rule, peer_selects_pod, resolve_port


@dataclass
class World:
    policies: list[Policy] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    namespaces: dict[str, Namespace] = field(default_factory=dict)

    def endpoint_by_ip(self, ip: str) -> Endpoint | None:
        addr = ip_address(ip)
        for ep in self.endpoints:
            if any(ip_address(i) == addr for i in ep.ips):
                return ep
        return None

    def find(self, namespace: str, pod: str) -> Endpoint | None:
        for ep in self.endpoints:
            if ep.namespace == namespace and pod in (ep.name, ep.container_id):
                return ep
        return None

    def selecting(self, ep: Endpoint, direction: str) -> list[Policy]:
        return [
            p
            for p in self.policies
            if p.namespace == ep.namespace
            and direction in p.policy_types
            and p.pod_selector.matches(ep.label_dict)
        ]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    direction: str  # "Egress", "Ingress" or "" (nothing isolates / self)
    policy: str = ""  # namespace/name that allowed it, or the isolating policies
    rule: int = -1
    reason: str = ""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    egress: Decision
    ingress: Decision

    @property
    def summary(self) -> str:
        d = self.egress if not self.egress.allowed else self.ingress
        return (
            f"{'allowed' if self.allowed else 'denied'}: {d.reason}"
            if not self.allowed
            else (f"allowed: egress {self.egress.reason}; ingress {self.ingress.reason}")
        )


def rule_allows(
    world: World,
    policy: Policy,
    rule: Rule,
    peer_ip: str,
    peer: Endpoint | None,
    dst: Endpoint | None,
    proto: str,
    port: int,
) -> bool:
    if rule.ports and not any(
        p == proto and lo <= port <= hi
        for spec in rule.ports
        for p, lo, hi in resolve_port(spec, dst)
    ):
        return False
    if not rule.peers:
        return True
    for pe in rule.peers:
        if pe.ip_block is not None:
            if pe.ip_block.contains(peer_ip):
                return True
        elif peer is not None and peer_selects_pod(pe, policy.namespace, peer, world.namespaces):
            return True
    return False


def _side(
    world: World,
    direction: str,
    ep: Endpoint,
    peer_ip: str,
    peer: Endpoint | None,
    dst: Endpoint | None,
    proto: str,
    port: int,
) -> Decision:
    policies = world.selecting(ep, direction)
    if not policies:
        return Decision(
            True, "", reason=f"{ep.namespace}/{ep.pod} is not isolated for {direction.lower()}"
        )
    rules_of = (lambda p: p.ingress) if direction == "Ingress" else (lambda p: p.egress)
    for policy in sorted(policies, key=lambda p: p.key):
        for i, rule in enumerate(rules_of(policy)):
            if rule_allows(world, policy, rule, peer_ip, peer, dst, proto, port):
                return Decision(
                    True,
                    direction,
                    policy.key,
                    i,
                    f"{direction.lower()} rule {i} of policy {policy.key} allows it",
                )
    names = ", ".join(p.key for p in policies)
    return Decision(
        False,
        direction,
        names,
        -1,
        f"{ep.namespace}/{ep.pod} is isolated for {direction.lower()} by {names}"
        " and no rule allows it",
    )


def decide(world: World, src_ip: str, dst_ip: str, proto: str, port: int) -> Verdict:
    """The verdict for a new connection src_ip -> dst_ip:port/proto (proto TCP/UDP/SCTP/ICMP)."""
    src, dst = world.endpoint_by_ip(src_ip), world.endpoint_by_ip(dst_ip)
    if src is not None and src == dst:
        ok = Decision(True, "", reason="a pod always reaches itself")
        return Verdict(True, ok, ok)
    open_ = Decision(True, "", reason="not a pod here")
    egress = _side(world, "Egress", src, dst_ip, dst, dst, proto, port) if src else open_
    ingress = _side(world, "Ingress", dst, src_ip, src, dst, proto, port) if dst else open_
    return Verdict(egress.allowed and ingress.allowed, egress, ingress)


def explain(world: World, src: Endpoint, dst: Endpoint, proto: str, port: int) -> list[Verdict]:
    """One verdict per address family both pods have."""
    out = []
    for s in src.ips:
        for d in dst.ips:
            if ip_address(s).version == ip_address(d).version:
                out.append(decide(world, s, d, proto, port))
    return out


def matrix(
    world: World, pods: Iterable[Endpoint], proto: str, port: int
) -> dict[tuple[str, str], bool]:
    pods = list(pods)
    return {
        (f"{a.namespace}/{a.pod}", f"{b.namespace}/{b.pod}"): decide(
            world, a.ips[0], b.ips[0], proto, port
        ).allowed
        for a in pods
        for b in pods
    }
