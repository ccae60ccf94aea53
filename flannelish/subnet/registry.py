"""The registry: a small interface between the lease logic and the datastore.

The lease manager needs only a handful of operations: read and write the
config, list leases with the snapshot revision, create a lease only if its key
is absent, replace a lease only if nobody changed it since we read it, delete,
revoke, and watch from a revision.  Two implementations: EtcdRegistry (real,
Flannel's key layout and JSON) and InMemoryRegistry (unit tests; it can also
compact its history and drop watches to exercise the resume logic).

The conditional writes are what fix Flannel's lease races (docs/flannel-compat.md §12): a
create never overwrites, and a renewal never overwrites a key that someone
else wrote after us.
"""

from __future__ import annotations

import logging
import threading
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
    "InMemoryRegistry",
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


# --------------------------------------------------------------------------


class InMemoryRegistry:
    """A registry in a dict with revisions, a change history and watches.

    Test hooks: ``compact()`` drops history (watches from older revisions get
    HistoryCompacted), ``break_watches()`` ends every open watch with an
    EtcdError as a dropped connection would, ``expire(subnet)`` deletes a key
    as a TTL expiry would, ``fail_next(n)`` makes the next n calls raise
    EtcdError, and ``reset()`` simulates etcd recreated without its data (every
    key gone, the config too, revision restarting low, watches dropped).
    """

    def __init__(self, key_prefix: str = "/coreos.com/network"):
        self.key_prefix = key_prefix
        self._cond = threading.Condition()
        self._config: bytes | None = None
        self._leases: dict[IPv4Network, Lease] = {}
        self._history: list[Change] = []
        self._revision = 1
        self._compacted = 0
        self._next_lease_id = 0x1000
        self._live_lease_ids: set[int] = set()
        self._watch_generation = 0
        self._fail_next = 0

    # -- test hooks ---------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def compact(self, revision: int | None = None) -> None:
        with self._cond:
            self._compacted = revision or self._revision

    def break_watches(self) -> None:
        with self._cond:
            self._watch_generation += 1
            self._cond.notify_all()

    def reset(self, revision: int = 1) -> None:
        """etcd recreated empty on the same endpoint: all keys and etcd leases are gone,
        the revision restarts at `revision` and open watches drop (the server restarted)."""
        with self._cond:
            self._config = None
            self._leases.clear()
            self._history.clear()
            self._live_lease_ids.clear()
            self._revision = revision
            self._compacted = 0
            self._watch_generation += 1
            self._cond.notify_all()

    def expire(self, subnet: IPv4Network) -> None:
        with self._cond:
            lease = self._leases.get(subnet)
            if lease is not None:
                self._delete_locked(lease)

    def fail_next(self, count: int = 1) -> None:
        self._fail_next = count

    def _maybe_fail(self) -> None:
        if self._fail_next > 0:
            self._fail_next -= 1
            raise EtcdError("etcd is unreachable (simulated)")

    # -- Registry -----------------------------------------------------------

    def close(self) -> None:
        self.break_watches()

    def get_config(self) -> bytes | None:
        self._maybe_fail()
        return self._config

    def put_config(self, raw: bytes) -> None:
        self._maybe_fail()
        self._config = raw

    def list_leases(self, with_expiry: bool = False) -> tuple[list[Lease], int]:
        self._maybe_fail()
        with self._cond:
            return sorted(self._leases.values(), key=lambda x: int(x.subnet.network_address)), (
                self._revision
            )

    def get_lease(self, subnet: IPv4Network, with_expiry: bool = False) -> Lease | None:
        self._maybe_fail()
        with self._cond:
            return self._leases.get(subnet)

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        self._maybe_fail()
        with self._cond:
            if subnet in self._leases:
                return None
            return self._put_locked(subnet, None, attrs, ttl)

    def replace_lease(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        self._maybe_fail()
        with self._cond:
            existing = self._leases.get(current.subnet)
            if existing is None or existing.mod_revision != current.mod_revision:
                return None
            return self._put_locked(current.subnet, current.ipv6_subnet, attrs, ttl)

    def delete_lease(self, lease: Lease, only_if_unchanged: bool = True) -> bool:
        self._maybe_fail()
        with self._cond:
            existing = self._leases.get(lease.subnet)
            if existing is None or (
                only_if_unchanged and existing.mod_revision != lease.mod_revision
            ):
                return False
            self._delete_locked(existing)
            return True

    def revoke(self, lease_id: int) -> None:
        self._maybe_fail()
        with self._cond:
            self._live_lease_ids.discard(lease_id)
            for lease in [x for x in self._leases.values() if x.lease_id == lease_id and lease_id]:
                self._delete_locked(lease)

    def put_raw(self, subnet: IPv4Network, attrs: LeaseAttrs, lease_id: int = 0) -> Lease:
        """Unconditional write, as an operator's etcdctl put would do."""
        with self._cond:
            lease = self._put_locked(subnet, None, attrs, None)
            if lease_id:
                lease = replace(lease, lease_id=lease_id, expiration=time.time() + 86400)
                self._leases[subnet] = lease
            return lease

    def watch(self, start_revision: int, subnet: IPv4Network | None = None) -> _MemoryWatch:
        self._maybe_fail()
        return _MemoryWatch(self, start_revision, subnet)

    @property
    def live_lease_ids(self) -> set[int]:
        return set(self._live_lease_ids)

    # -- internals (hold self._cond) ------------------------------------------

    def _put_locked(
        self,
        subnet: IPv4Network,
        ipv6_subnet: IPv6Network | None,
        attrs: LeaseAttrs,
        ttl: int | None,
    ) -> Lease:
        self._revision += 1
        lease_id = 0
        if ttl:
            self._next_lease_id += 1
            lease_id = self._next_lease_id
            self._live_lease_ids.add(lease_id)
        lease = Lease(
            subnet,
            attrs,
            time.time() + ttl if ttl else None,
            lease_id,
            ipv6_subnet,
            self._revision,
        )
        self._leases[subnet] = lease
        self._history.append(Change(subnet, lease, self._revision))
        self._cond.notify_all()
        return lease

    def _delete_locked(self, lease: Lease) -> None:
        self._revision += 1
        del self._leases[lease.subnet]
        self._history.append(Change(lease.subnet, None, self._revision))
        self._cond.notify_all()


class _MemoryWatch:
    def __init__(self, registry: InMemoryRegistry, start_revision: int, subnet: IPv4Network | None):
        self._reg = registry
        self._next = start_revision
        self._subnet = subnet
        self._generation = registry._watch_generation
        self._closed = False
        self.established = True

    def next_changes(self, timeout: float) -> list[Change]:
        reg = self._reg
        deadline = time.monotonic() + timeout
        with reg._cond:
            while True:
                if self._closed or reg._watch_generation != self._generation:
                    raise EtcdError("watch connection lost (simulated)")
                if self._next < reg._compacted:
                    raise HistoryCompacted(reg._compacted)
                if self._next > 1 and reg._revision < self._next - 1:
                    raise ClusterReset(reg._revision, self._next - 1)
                new = [c for c in reg._history if c.revision >= self._next]
                if new:
                    self._next = new[-1].revision + 1
                    return [c for c in new if self._subnet is None or c.subnet == self._subnet]
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                reg._cond.wait(left)

    def close(self) -> None:
        self._closed = True
