"""NetworkPolicy documents (YAML or JSON, one or more) into validated Policy objects.

Validation follows the networking.k8s.io/v1 schema and the API server's
checks; an error names the field (``spec.ingress[0].ports[1].endPort``) and
nothing is written by a caller that validates every document first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from ipaddress import ip_network
from typing import Any

from flannelish.errors import ConfigError

from .model import PROTOCOLS, IPBlock, LabelSelector, Peer, Policy, PortSpec, Requirement, Rule

# Used with fullmatch: with match() and "$", "web\n" would pass (a value from etcd).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class PolicyError(ConfigError):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"invalid NetworkPolicy: {where}: {problem}")
        self.field = where


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every document of a YAML or JSON text (a JSON list or a `kind: List` counts as many)."""
    stripped = text.lstrip()
    docs: list[Any]
    if stripped.startswith(("{", "[")):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise PolicyError("document", f"not valid JSON: {exc}") from None
        docs = value if isinstance(value, list) else [value]
    else:
        import yaml

        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise PolicyError("document", f"not valid YAML: {exc}") from None
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and doc.get("kind") == "List":
            out.extend(doc.get("items") or [])
        elif isinstance(doc, dict):
            out.append(doc)
        else:
            raise PolicyError(f"document {i}", "not a mapping")
    return out


def parse_policies(text: str, default_namespace: str = "default") -> list[Policy]:
    docs = load_documents(text)
    if not docs:
        raise PolicyError("document", "no NetworkPolicy in the input")
    policies = []
    for i, doc in enumerate(docs):
        try:
            policies.append(parse_policy(doc, default_namespace))
        except PolicyError as exc:
            if len(docs) > 1:
                raise PolicyError(
                    f"document {i}: {exc.field}", str(exc).split(": ", 2)[-1]
                ) from None
            raise
    return policies


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PolicyError(where, "must be a mapping")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(where, "must be a list")
    return value


def _unknown(doc: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    for key in doc:
        if key not in allowed:
            raise PolicyError(f"{where}.{key}" if where else key, "unknown field")


def parse_policy(doc: dict[str, Any], default_namespace: str = "default") -> Policy:
    _unknown(doc, ("apiVersion", "kind", "metadata", "spec", "status"), "")
    if doc.get("apiVersion") != "networking.k8s.io/v1":
        raise PolicyError(
            "apiVersion", f"must be networking.k8s.io/v1, not {doc.get('apiVersion')!r}"
        )
    if doc.get("kind") != "NetworkPolicy":
        raise PolicyError("kind", f"must be NetworkPolicy, not {doc.get('kind')!r}")
    meta = _obj(doc.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 253:
        raise PolicyError("metadata.name", f"must be a DNS-1123 name, not {name!r}")
    namespace = meta.get("namespace", default_namespace)
    if not isinstance(namespace, str) or not _NAME.fullmatch(namespace) or len(namespace) > 63:
        raise PolicyError("metadata.namespace", f"must be a DNS-1123 label, not {namespace!r}")
    spec = _obj(doc.get("spec"), "spec")
    _unknown(spec, ("podSelector", "policyTypes", "ingress", "egress"), "spec")
    if "podSelector" not in spec:
        raise PolicyError("spec.podSelector", "required (use {} for every pod)")
    pod_selector = parse_selector(spec["podSelector"], "spec.podSelector")
    ingress = tuple(
        _rule(r, f"spec.ingress[{i}]", "from")
        for i, r in enumerate(_list(spec.get("ingress"), "spec.ingress"))
    )
    egress = tuple(
        _rule(r, f"spec.egress[{i}]", "to")
        for i, r in enumerate(_list(spec.get("egress"), "spec.egress"))
    )
    types_raw = spec.get("policyTypes")
    if types_raw is None:
        types: tuple[str, ...] = ("Ingress", "Egress") if "egress" in spec else ("Ingress",)
    else:
        items = _list(types_raw, "spec.policyTypes")
        for i, t in enumerate(items):
            if t not in ("Ingress", "Egress"):
                raise PolicyError(f"spec.policyTypes[{i}]", f"must be Ingress or Egress, not {t!r}")
        if not items:
            raise PolicyError("spec.policyTypes", "must not be empty")
        types = tuple(t for t in ("Ingress", "Egress") if t in items)
    clean = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return Policy(namespace, name, pod_selector, types, ingress, egress, clean)


def parse_selector(value: Any, where: str) -> LabelSelector:
    doc = _obj(value, where)
    _unknown(doc, ("matchLabels", "matchExpressions"), where)
    labels = _obj(doc.get("matchLabels"), f"{where}.matchLabels")
    for k, v in labels.items():
        _label(k, v, f"{where}.matchLabels.{k}")
    reqs = []
    for i, expr in enumerate(_list(doc.get("matchExpressions"), f"{where}.matchExpressions")):
        w = f"{where}.matchExpressions[{i}]"
        expr = _obj(expr, w)
        _unknown(expr, ("key", "operator", "values"), w)
        key, op = expr.get("key"), expr.get("operator")
        if not isinstance(key, str) or not _label_key_ok(key):
            raise PolicyError(f"{w}.key", f"must be a label key, not {key!r}")
        if op not in OPERATORS:
            raise PolicyError(f"{w}.operator", f"must be one of {', '.join(OPERATORS)}, not {op!r}")
        values = _list(expr.get("values"), f"{w}.values")
        if op in ("In", "NotIn") and not values:
            raise PolicyError(f"{w}.values", f"must not be empty for {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise PolicyError(f"{w}.values", f"must be empty for {op}")
        for j, v in enumerate(values):
            if not isinstance(v, str) or not _LABEL_VALUE.fullmatch(v) or len(v) > 63:
                raise PolicyError(f"{w}.values[{j}]", f"must be a label value, not {v!r}")
        reqs.append(Requirement(key, op, tuple(values)))
    return LabelSelector(tuple(sorted((str(k), str(v)) for k, v in labels.items())), tuple(reqs))


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(_NAME.fullmatch(p) for p in prefix.split("."))):
        return False
    return bool(_LABEL_NAME.fullmatch(name)) and len(name) <= 63


def _label(key: Any, value: Any, where: str) -> None:
    if not isinstance(key, str) or not _label_key_ok(key):
        raise PolicyError(where, "not a valid label key")
    if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value) or len(value) > 63:
        raise PolicyError(where, f"must be a label value (a string), not {value!r}")


def _rule(value: Any, where: str, peers_key: str) -> Rule:
    doc = _obj(value, where)
    _unknown(doc, ("ports", peers_key), where)
    peers = tuple(
        _peer(p, f"{where}.{peers_key}[{i}]")
        for i, p in enumerate(_list(doc.get(peers_key), f"{where}.{peers_key}"))
    )
    ports = tuple(
        _port(p, f"{where}.ports[{i}]")
        for i, p in enumerate(_list(doc.get("ports"), f"{where}.ports"))
    )
    return Rule(peers, ports)


def _peer(value: Any, where: str) -> Peer:
    doc = _obj(value, where)
    _unknown(doc, ("podSelector", "namespaceSelector", "ipBlock"), where)
    if not doc:
        raise PolicyError(where, "must set podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in doc:
        if len(doc) > 1:
            raise PolicyError(where, "ipBlock cannot be combined with a selector")
        return Peer(ip_block=_ip_block(doc["ipBlock"], f"{where}.ipBlock"))
    pod = (
        parse_selector(doc["podSelector"], f"{where}.podSelector") if "podSelector" in doc else None
    )
    ns = (
        parse_selector(doc["namespaceSelector"], f"{where}.namespaceSelector")
        if "namespaceSelector" in doc
        else None
    )
    return Peer(pod_selector=pod, namespace_selector=ns)


def _ip_block(value: Any, where: str) -> IPBlock:
    doc = _obj(value, where)
    _unknown(doc, ("cidr", "except"), where)
    try:
        cidr = (
            ip_network(str(doc["cidr"]), strict=False) if isinstance(doc.get("cidr"), str) else None
        )
    except ValueError:
        cidr = None
    if cidr is None:
        raise PolicyError(f"{where}.cidr", f"must be a CIDR, not {doc.get('cidr')!r}")
    excepts = []
    for i, e in enumerate(_list(doc.get("except"), f"{where}.except")):
        try:
            net = ip_network(str(e), strict=False)
        except ValueError:
            raise PolicyError(f"{where}.except[{i}]", f"must be a CIDR, not {e!r}") from None
        if net.version != cidr.version or not net.subnet_of(cidr):  # type: ignore[arg-type]
            raise PolicyError(f"{where}.except[{i}]", f"{net} must be inside {cidr}")
        if net == cidr:
            raise PolicyError(f"{where}.except[{i}]", "must be strictly smaller than cidr")
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


def _port(value: Any, where: str) -> PortSpec:
    doc = _obj(value, where)
    _unknown(doc, ("protocol", "port", "endPort"), where)
    proto = doc.get("protocol", "TCP")
    if proto not in PROTOCOLS:
        raise PolicyError(f"{where}.protocol", f"must be TCP, UDP or SCTP, not {proto!r}")
    port = doc.get("port")
    end = doc.get("endPort")
    if isinstance(port, bool) or (port is not None and not isinstance(port, int | str)):
        raise PolicyError(f"{where}.port", "must be a number or a port name")
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise PolicyError(f"{where}.port", f"must be 1-65535, not {port}")
    if isinstance(port, str):
        if port.isdigit():
            port = int(port)
            if not 1 <= port <= 65535:
                raise PolicyError(f"{where}.port", f"must be 1-65535, not {port}")
        elif not _PORT_NAME.fullmatch(port) or len(port) > 15 or not re.search("[a-z]", port):
            raise PolicyError(f"{where}.port", f"not a valid port name: {port!r}")
    if end is not None:
        if isinstance(end, bool) or not isinstance(end, int):
            raise PolicyError(f"{where}.endPort", "must be a number")
        if not isinstance(port, int):
            raise PolicyError(f"{where}.endPort", "needs a numeric port")
        if not port <= end <= 65535:
            raise PolicyError(f"{where}.endPort", f"must be between port ({port}) and 65535")
    return PortSpec(proto, port, end)
