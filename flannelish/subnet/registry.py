"""The registry: a small interface between the lease logic and the datastore.

The lease manager needs only a handful of operations: read and write the
config, list leases with the snapshot revision, create a lease only if its key
is absent, replace a lease only if nobody changed it since we read it, delete,
revoke, and watch from a revision.  EtcdRegistry implements it on etcd with
Flannel's key layout and JSON; the unit tests use
flannelish.testing.registry.InMemoryRegistry.

The conditional writes are what fix Flannel's lease races (docs/flannel-compat.md §12): a
create never overwrites, and a renewal never overwrites a key that someone
else wrote after us.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from flannelish.errors import EtcdError
from flannelish.subnet.etcdstore import (
    ClusterReset,
    EtcdOptions,
    EtcdStore,
    HistoryCompacted,
    KeyValue,
)
from flannelish.subnet.etcdstore import WatchStream as EtcdWatchStream
from flannelish.subnet.keys import Keys
from flannelish.subnet.lease import Lease, LeaseAttrs, LeaseDecodeError

log = logging.getLogger(__name__)

__all__ = [
    "Change",
    "ClusterReset",
    "EtcdRegistry",
    "HistoryCompacted",
    "Registry",
    "WatchStream",
]


@dataclass(frozen=True)
class Change:
    """One lease key changed: ``lease`` is the new value, None if the key was deleted."""

    subnet: IPv4Network
    lease: Lease | None
    revision: int


class WatchStream(Protocol):
    @property
    def established(self) -> bool:
        """The server confirmed the watch (the connection works)."""
        ...

    def next_changes(self, timeout: float) -> list[Change]:
        """Changes of one response; [] after `timeout`.  Raises HistoryCompacted,
        ClusterReset (the store is behind the start revision: recreated without its
        data) or EtcdError when the stream is over (the caller re-opens it or re-lists)."""
        ...

    def close(self) -> None: ...


class Registry(Protocol):
    key_prefix: str

    def get_config(self) -> bytes | None: ...

    def put_config(self, raw: bytes) -> None: ...

    def list_leases(self, with_expiry: bool = False) -> tuple[list[Lease], int]:
        """All leases and the revision of the snapshot."""
        ...

    def get_lease(self, subnet: IPv4Network, with_expiry: bool = False) -> Lease | None: ...

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        """Write a new key; None if it already exists.  ttl None: no etcd lease (reservation)."""
        ...

    def replace_lease(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        """Rewrite `current`'s key; None if it changed or vanished since `current` was read."""
        ...

    def delete_lease(self, lease: Lease, only_if_unchanged: bool = True) -> bool: ...

    def revoke(self, lease_id: int) -> None: ...

    def watch(self, start_revision: int, subnet: IPv4Network | None = None) -> WatchStream:
        """Changes to all lease keys (or only `subnet`'s) from `start_revision` on."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------


class EtcdRegistry:
    """The registry on etcd with Flannel's key layout and lease JSON."""

    def __init__(self, options: EtcdOptions, store: EtcdStore | None = None):
        self.keys = Keys(options.prefix)
        self.key_prefix = options.prefix
        self.store = store or EtcdStore(options)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> EtcdRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_config(self) -> bytes | None:
        kv = self.store.get(self.keys.config)
        return kv.value if kv else None

    def put_config(self, raw: bytes) -> None:
        self.store.put(self.keys.config, raw)

    def list_leases(self, with_expiry: bool = False) -> tuple[list[Lease], int]:
        kvs, revision = self.store.get_prefix(self.keys.subnets)
        leases = [lease for kv in kvs if (lease := self._decode(kv)) is not None]
        if with_expiry:
            leases = self._with_expiry(leases)
        return leases, revision

    def get_lease(self, subnet: IPv4Network, with_expiry: bool = False) -> Lease | None:
        # A prefix read also finds the dual-stack form of the key ("…-24&fd00::-64").
        kvs, _ = self.store.get_prefix(self.keys.subnet(subnet))
        found = [
            lease
            for kv in kvs
            if (lease := self._decode(kv)) is not None and lease.subnet == subnet
        ]
        if not found:
            return None
        return self._with_expiry(found)[0] if with_expiry else found[0]

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        return self._write(subnet, None, attrs, ttl, expect_revision=0)

    def replace_lease(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        return self._write(
            current.subnet, current.ipv6_subnet, attrs, ttl, expect_revision=current.mod_revision
        )

    def delete_lease(self, lease: Lease, only_if_unchanged: bool = True) -> bool:
        key = self.keys.subnet(lease.subnet, lease.ipv6_subnet)
        return self.store.delete(key, lease.mod_revision if only_if_unchanged else 0)

    def revoke(self, lease_id: int) -> None:
        if lease_id:
            self.store.revoke(lease_id)

    def watch(self, start_revision: int, subnet: IPv4Network | None = None) -> _EtcdWatch:
        prefix = self.keys.subnet(subnet) if subnet is not None else self.keys.subnets
        return _EtcdWatch(self, self.store.watch(prefix, start_revision), subnet)

    # -- helpers ------------------------------------------------------------

    def _write(
        self,
        subnet: IPv4Network,
        ipv6_subnet: IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int | None,
        expect_revision: int,
    ) -> Lease | None:
        key = self.keys.subnet(subnet, ipv6_subnet)
        lease_id, granted = self.store.grant(ttl) if ttl else (0, 0)
        try:
            kv = self.store.put_if(key, attrs.to_json().encode(), expect_revision, lease_id)
        except BaseException:
            self._revoke_quietly(lease_id)
            raise
        if kv is None:
            self._revoke_quietly(lease_id)  # lost the race: do not leak the lease
            return None
        expiration = time.time() + granted if lease_id else None
        return Lease(subnet, attrs, expiration, lease_id, ipv6_subnet, kv.mod_revision)

    def _revoke_quietly(self, lease_id: int) -> None:
        if lease_id:
            try:
                self.store.revoke(lease_id)
            except EtcdError as exc:
                log.warning("could not revoke unused etcd lease %x: %s", lease_id, exc)

    def _decode(self, kv: KeyValue) -> Lease | None:
        subnets = self.keys.parse(kv.key)
        if subnets is None:
            log.warning("skipping %s: not a subnet lease key", kv.key)
            return None
        try:
            attrs = LeaseAttrs.from_json(kv.value)
        except LeaseDecodeError as exc:
            log.warning("skipping bad subnet node %s: %s", kv.key, exc)
            return None
        return Lease(subnets[0], attrs, None, kv.lease_id, subnets[1], kv.mod_revision)

    def _with_expiry(self, leases: list[Lease]) -> list[Lease]:
        ttls: dict[int, int] = {}
        out = []
        now = time.time()
        for lease in leases:
            if not lease.lease_id:
                out.append(lease)
                continue
            if lease.lease_id not in ttls:
                ttls[lease.lease_id] = self.store.ttl(lease.lease_id)
            ttl = ttls[lease.lease_id]
            # TTL -1: the lease expired between the read and the lookup.
            out.append(replace(lease, expiration=now + max(ttl, 0)))
        return out


class _EtcdWatch:
    def __init__(self, registry: EtcdRegistry, stream: EtcdWatchStream, subnet: IPv4Network | None):
        self._registry = registry
        self._stream = stream
        self._subnet = subnet

    @property
    def established(self) -> bool:
        return self._stream.established

    def next_changes(self, timeout: float) -> list[Change]:
        changes = []
        for event in self._stream.next_events(timeout):
            subnets = self._registry.keys.parse(event.kv.key)
            if subnets is None or (self._subnet is not None and subnets[0] != self._subnet):
                continue
            if event.deleted:
                changes.append(Change(subnets[0], None, event.kv.mod_revision))
                continue
            lease = self._registry._decode(event.kv)
            if lease is not None:
                changes.append(Change(lease.subnet, lease, event.kv.mod_revision))
        return changes

    def close(self) -> None:
        self._stream.close()
