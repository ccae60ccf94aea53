"""The policy objects: label selectors, peers, rules, policies, endpoints, namespaces."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

NS_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}

Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """An empty selector selects everything (as in Kubernetes)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def to_dict(self) -> dict:
        out: dict = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {
                    "key": r.key,
                    "operator": r.operator,
                    **({"values": list(r.values)} if r.values else {}),
                }
                for r in self.match_expressions
            ]
        return out


@dataclass(frozen=True)
class IPBlock:
    cidr: Network
    except_: tuple[Network, ...] = ()

    def contains(self, ip: str) -> bool:
        addr = ip_address(ip)
        if addr.version != self.cidr.version or addr not in self.cidr:
            return False
        return not any(addr in e for e in self.except_)


@dataclass(frozen=True)
class Peer:
    """One ``from``/``to`` entry: pods (podSelector and/or namespaceSelector) or an ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PortSpec:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol; str: a named port
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """peers empty: every peer; ports empty: every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortSpec, ...] = ()


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]  # "Ingress", "Egress"
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    source: dict = field(default_factory=dict, compare=False, hash=False)  # the document

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class Endpoint:
    container_id: str
    node: str
    ips: tuple[str, ...]
    namespace: str = "default"
    name: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[NamedPort, ...] = ()

    def __post_init__(self) -> None:
        # one spelling per address: sets, named-port elements and lookups compare strings
        object.__setattr__(self, "ips", tuple(str(ip_address(ip)) for ip in self.ips))

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def pod(self) -> str:
        return self.name or self.container_id

    def to_dict(self) -> dict:
        return {
            "containerID": self.container_id,
            "node": self.node,
            "ips": list(self.ips),
            "namespace": self.namespace,
            "name": self.pod,
            "labels": dict(self.labels),
            "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port} for p in self.ports],
        }

    @classmethod
    def from_dict(cls, doc: dict) -> Endpoint:
        return cls(
            container_id=str(doc["containerID"]),
            node=str(doc.get("node", "")),
            ips=tuple(
                str(ip_network(ip, strict=False).network_address) for ip in doc.get("ips", [])
            ),
            namespace=str(doc.get("namespace") or "default"),
            name=str(doc.get("name") or doc["containerID"]),
            labels=tuple(sorted((str(k), str(v)) for k, v in (doc.get("labels") or {}).items())),
            ports=tuple(
                NamedPort(str(p["name"]), str(p.get("protocol", "TCP")).upper(), int(p["port"]))
                for p in doc.get("ports") or []
            ),
        )


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_dict(self) -> dict[str, str]:
        out = dict(self.labels)
        out[NS_NAME_LABEL] = self.name  # implied, as in Kubernetes
        return out


def namespace_labels(namespaces: dict[str, Namespace], name: str) -> dict[str, str]:
    ns = namespaces.get(name)
    return ns.label_dict if ns is not None else {NS_NAME_LABEL: name}


def peer_selects_pod(
    peer: Peer, policy_ns: str, ep: Endpoint, namespaces: dict[str, Namespace]
) -> bool:
    """Does this from/to entry select the endpoint (pod peers only)?"""
    if peer.ip_block is not None:
        return False
    if peer.namespace_selector is not None:
        if not peer.namespace_selector.matches(namespace_labels(namespaces, ep.namespace)):
            return False
    elif ep.namespace != policy_ns:
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(ep.label_dict)


def resolve_port(spec: PortSpec, ep: Endpoint | None) -> list[tuple[str, int, int]]:
    """(protocol, first, last) ranges of a port spec, a named port looked up on `ep`."""
    if spec.port is None:
        return [(spec.protocol, 0, 65535)]
    if isinstance(spec.port, int):
        return [(spec.protocol, spec.port, spec.end_port or spec.port)]
    if ep is None:
        return []
    return [
        (p.protocol, p.port, p.port)
        for p in ep.ports
        if p.name == spec.port and p.protocol == spec.protocol
    ]
