"""Policies, endpoints and namespaces in etcd, under flannelish's own prefix.

Keys (``PREFIX`` = ``/flannelish/policy``; never Flannel's ``/coreos.com/network``)::

    PREFIX/policies/<namespace>/<name>     the NetworkPolicy document (JSON)
    PREFIX/namespaces/<name>               {"labels": {...}}
    PREFIX/endpoints/<node>/<containerID>  the endpoint (JSON), bound to the node's etcd lease

Values are decoded with the same bounds as leases (flannelish.subnet.jsonvalue);
a value that does not decode is skipped and reported, never fatal.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from .evaluate import World
from .model import Endpoint, Namespace, Policy
from .parse import PolicyError, parse_policy

if TYPE_CHECKING:
    from flannelish.subnet.etcdstore import EtcdStore
    from flannelish.subnet.etcdwatch import WatchStream

log = logging.getLogger("flannelish.policy")

PREFIX = "/flannelish/policy/"
POLICIES = PREFIX + "policies/"
NAMESPACES = PREFIX + "namespaces/"
ENDPOINTS = PREFIX + "endpoints/"
MAX_VALUE_BYTES = 256 * 1024


def _decode(value: bytes) -> Any:
    from flannelish.subnet.jsonvalue import loads_bounded

    return loads_bounded(value, max_bytes=MAX_VALUE_BYTES, max_depth=32)


def namespace_from(name: str, doc: Any) -> Namespace:
    labels = (doc or {}).get("labels") or {}
    return Namespace(name, tuple(sorted((str(k), str(v)) for k, v in labels.items())))


class PolicyStore:
    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.bad: dict[str, str] = {}  # key -> why it was skipped

    # -- policies ------------------------------------------------------------------
    def put_policy(self, policy: Policy) -> None:
        self.store.put(
            f"{POLICIES}{policy.key}", json.dumps(policy.source, sort_keys=True).encode()
        )

    def get_policy(self, namespace: str, name: str) -> Policy | None:
        kv = self.store.get(f"{POLICIES}{namespace}/{name}")
        return None if kv is None else parse_policy(_decode(kv.value))

    def delete_policy(self, namespace: str, name: str) -> bool:
        return self.store.delete(f"{POLICIES}{namespace}/{name}")

    # -- namespaces ----------------------------------------------------------------
    def get_namespace(self, name: str) -> Namespace:
        kv = self.store.get(f"{NAMESPACES}{name}")
        labels = (_decode(kv.value) or {}).get("labels", {}) if kv is not None else {}
        return Namespace(name, tuple(sorted(labels.items())))

    def put_namespace(self, ns: Namespace) -> None:
        self.store.put(f"{NAMESPACES}{ns.name}", json.dumps({"labels": dict(ns.labels)}).encode())

    # -- endpoints -----------------------------------------------------------------
    def put_endpoint(self, ep: Endpoint, lease_id: int = 0) -> None:
        key = f"{ENDPOINTS}{ep.node}/{ep.container_id}"
        value = json.dumps(ep.to_dict(), sort_keys=True).encode()
        if lease_id:
            current = self.store.get(key)
            if (
                self.store.put_if(key, value, current.mod_revision if current else 0, lease_id)
                is None
            ):
                raise PolicyError(key, "changed while it was written; retry")
        else:
            self.store.put(key, value)

    def delete_endpoint(self, node: str, container_id: str) -> bool:
        return self.store.delete(f"{ENDPOINTS}{node}/{container_id}")

    # -- everything ----------------------------------------------------------------
    def snapshot(self) -> tuple[World, int]:
        kvs, revision = self.store.get_prefix(PREFIX)
        world = World()
        bad: dict[str, str] = {}
        for kv in kvs:
            try:
                self._add(world, kv.key, _decode(kv.value))
            except Exception as exc:  # one bad value never hides the others
                bad[kv.key] = str(exc)
        if bad.keys() - self.bad.keys():
            log.warning("skipping undecodable policy keys: %s", bad)
        self.bad = bad
        return world, revision

    @staticmethod
    def _add(world: World, key: str, doc: Any) -> None:
        # a value must name what its key names: one policy or endpoint per key
        if key.startswith(POLICIES):
            policy = parse_policy(doc)
            if policy.key != key[len(POLICIES) :]:
                raise ValueError(f"the document names {policy.key}, not {key[len(POLICIES) :]}")
            world.policies.append(policy)
        elif key.startswith(NAMESPACES):
            name = key[len(NAMESPACES) :]
            world.namespaces[name] = namespace_from(name, doc)
        elif key.startswith(ENDPOINTS):
            ep = Endpoint.from_dict(doc)
            if f"{ep.node}/{ep.container_id}" != key[len(ENDPOINTS) :]:
                raise ValueError(f"the endpoint is {ep.node}/{ep.container_id}")
            world.endpoints.append(ep)

    def watch(self, revision: int) -> WatchStream:
        return self.store.watch(PREFIX, revision)
