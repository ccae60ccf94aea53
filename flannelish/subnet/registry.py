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

Bad leases: a key under ``subnets/`` that is not a lease key, or whose value
does not decode (too large, too deep, not JSON, wrong types: see
flannelish.subnet.jsonvalue), is never an exception.  It is skipped, logged
once per (key, revision), counted (``bad_leases_total``) and kept in
``bad_leases`` until the key is deleted or rewritten with a good value.  A
listing returns them too (``Listing.bad``) because their subnets are taken: a
create there would fail.  A watched put that makes a value bad is a Change
with ``lease=None`` and ``bad`` set: for the peers it is a removal.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from flannelish.errors import ConfigError, EtcdError
from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore
from flannelish.subnet.etcdwatch import (
    ClusterReset,
    HistoryCompacted,
    KeyValue,
    WatchResponseTooLarge,
)
from flannelish.subnet.etcdwatch import WatchStream as EtcdWatchStream
from flannelish.subnet.jsonvalue import MAX_VALUE_BYTES
from flannelish.subnet.keys import Keys, LeaseKey, as_key
from flannelish.subnet.lease import Lease, LeaseAttrs, LeaseDecodeError

log = logging.getLogger(__name__)

__all__ = [
    "BadLease",
    "BadLeases",
    "Change",
    "ClusterReset",
    "EtcdRegistry",
    "HistoryCompacted",
    "Listing",
    "Registry",
    "WatchResponseTooLarge",
    "WatchStream",
]


@dataclass(frozen=True)
class Change:
    """One lease key changed: ``lease`` is the new value, None if the key was deleted
    or (``bad`` set: the reason) now holds a value that is not a usable lease."""

    subnet: IPv4Network  # as the etcd key names it (0.0.0.0/0 for an IPv6-only lease)
    lease: Lease | None
    revision: int
    bad: str | None = None
    ipv6_subnet: IPv6Network | None = None

    @property
    def key(self) -> LeaseKey:
        return LeaseKey.of(self.subnet, self.ipv6_subnet)


@dataclass(frozen=True)
class BadLease:
    """A key under ``subnets/`` that is not a usable lease."""

    key: str
    subnet: IPv4Network | None  # None: the key names no subnet
    reason: str
    mod_revision: int = 0
    ipv6_subnet: IPv6Network | None = None

    @property
    def lease_key(self) -> LeaseKey | None:
        return None if self.subnet is None else LeaseKey.of(self.subnet, self.ipv6_subnet)


@dataclass(frozen=True)
class Listing:
    """All leases at one revision, and the keys skipped as bad leases."""

    leases: list[Lease]
    revision: int
    bad: list[BadLease] = field(default_factory=list)


class BadLeases:
    """The bad leases known now, the count ever seen, and one log line per (key, revision)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[str, BadLease] = {}
        self.total = 0

    def seen(self, bad: BadLease) -> None:
        with self._lock:
            before = self._current.get(bad.key)
            self._current[bad.key] = bad
            if before is not None and before.mod_revision == bad.mod_revision:
                return
            self.total += 1
        log.warning(
            "skipping bad lease %s: %s",
            bad.key[:200],
            bad.reason,
            extra={"key": bad.key[:200], "mod_revision": bad.mod_revision},
        )

    def cleared(self, key: str) -> None:
        with self._lock:
            self._current.pop(key, None)

    def replace_all(self, found: list[BadLease]) -> None:
        """A full listing: exactly `found` are bad now."""
        with self._lock:
            keys = {b.key for b in found}
            for key in [k for k in self._current if k not in keys]:
                del self._current[key]
        for bad in found:
            self.seen(bad)

    def current(self) -> list[BadLease]:
        with self._lock:
            return sorted(self._current.values(), key=lambda b: b.key)


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

    def list_leases(
        self, with_expiry: bool = False, subnet: IPv4Network | LeaseKey | None = None
    ) -> tuple[list[Lease], int]:
        """All leases (or only `subnet`'s, see key_matches) and the revision of the snapshot."""
        ...

    def list_all(self, with_expiry: bool = False) -> Listing:
        """All leases, the revision of the snapshot and the bad leases skipped."""
        ...

    def leases_since(self, revision: int) -> list[Lease] | None:
        """The leases last written at `revision` or later (bad ones left out); None
        when the registry cannot tell without a full listing."""
        ...

    @property
    def bad_leases(self) -> list[BadLease]:
        """Keys under subnets/ skipped as bad leases, as last seen."""
        ...

    @property
    def bad_leases_total(self) -> int:
        """How many bad (key, revision) pairs were seen so far."""
        ...

    def get_lease(
        self, subnet: IPv4Network | LeaseKey, with_expiry: bool = False
    ) -> Lease | None: ...

    def create_lease(
        self, subnet: IPv4Network | LeaseKey, attrs: LeaseAttrs, ttl: int | None
    ) -> Lease | None:
        """Write a new key; None if it already exists.  ttl None: no etcd lease (reservation)."""
        ...

    def replace_lease(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        """Rewrite `current`'s key; None if it changed or vanished since `current` was read."""
        ...

    def delete_lease(self, lease: Lease, only_if_unchanged: bool = True) -> bool: ...

    def revoke(self, lease_id: int) -> None: ...

    def watch(
        self, start_revision: int, subnet: IPv4Network | LeaseKey | None = None
    ) -> WatchStream:
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
        self._bad = BadLeases()

    @property
    def bad_leases(self) -> list[BadLease]:
        return self._bad.current()

    @property
    def bad_leases_total(self) -> int:
        return self._bad.total

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> EtcdRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_config(self) -> bytes | None:
        kv = self.store.get(self.keys.config)
        if kv is not None and kv.oversized:  # b"" would read as "not JSON": say what it is
            raise ConfigError(
                f"the network config at {self.keys.config} is too large to receive",
                f"a config is a few hundred bytes; the limit is {MAX_VALUE_BYTES} bytes",
            )
        return kv.value if kv else None

    def put_config(self, raw: bytes) -> None:
        self.store.put(self.keys.config, raw)

    def list_leases(
        self, with_expiry: bool = False, subnet: IPv4Network | LeaseKey | None = None
    ) -> tuple[list[Lease], int]:
        if subnet is None:
            listing = self.list_all(with_expiry)
            return listing.leases, listing.revision
        # One node's lease (its own-lease watch): a range over its key, not a listing
        # of every lease (0.5 s of a 5000-node daemon's start-up).
        leases, revision = self._leases_at(as_key(subnet), track=False)
        return (self._with_expiry(leases) if with_expiry else leases), revision

    def leases_since(self, revision: int) -> list[Lease] | None:
        kvs = self.store.get_prefix_since(self.keys.subnets, revision)
        if kvs is None:
            return None
        decoded = (self._decode(kv, track=False) for kv in kvs)
        return [x for x in decoded if isinstance(x, Lease)]

    def list_all(self, with_expiry: bool = False) -> Listing:
        kvs, revision = self.store.get_prefix(self.keys.subnets)
        leases: list[Lease] = []
        bad: list[BadLease] = []
        for kv in kvs:
            decoded = self._decode(kv, track=False)
            (leases if isinstance(decoded, Lease) else bad).append(decoded)  # type: ignore[arg-type]
        self._bad.replace_all(bad)
        if with_expiry:
            leases = self._with_expiry(leases)
        return Listing(leases, revision, bad)

    def get_lease(self, subnet: IPv4Network | LeaseKey, with_expiry: bool = False) -> Lease | None:
        found, _ = self._leases_at(as_key(subnet), track=True)
        if not found:
            return None
        return self._with_expiry(found)[0] if with_expiry else found[0]

    def create_lease(
        self, subnet: IPv4Network | LeaseKey, attrs: LeaseAttrs, ttl: int | None
    ) -> Lease | None:
        key = as_key(subnet)
        return self._write(key.subnet, key.v6, attrs, ttl, expect_revision=0)

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

    def watch(
        self, start_revision: int, subnet: IPv4Network | LeaseKey | None = None
    ) -> _EtcdWatch:
        key = as_key(subnet) if subnet is not None else None
        prefix = self.keys.lease(key) if key is not None else self.keys.subnets
        return _EtcdWatch(self, self.store.watch(prefix, start_revision), key)

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

    def _leases_at(self, key: LeaseKey, track: bool) -> tuple[list[Lease], int]:
        """The leases that are `key` (key_matches: an IPv4 subnet alone also finds the
        dual-stack form of its key, "…-24&fd00::-64"), read as one range over the key,
        and the revision; `track` as in _decode."""
        kvs, revision = self.store.get_prefix(self.keys.lease(key))
        leases = [
            lease
            for kv in kvs
            if isinstance(lease := self._decode(kv, track), Lease) and key_matches(lease.key, key)
        ]
        return leases, revision

    def _revoke_quietly(self, lease_id: int) -> None:
        if lease_id:
            try:
                self.store.revoke(lease_id)
            except EtcdError as exc:
                log.warning("could not revoke unused etcd lease %x: %s", lease_id, exc)

    def _decode(
        self,
        kv: KeyValue,
        track: bool = True,
        subnets: tuple[IPv4Network, IPv6Network | None] | None = None,
    ) -> Lease | BadLease:
        """The lease, or a BadLease (logged and counted unless `track` is False);
        `subnets`: the key, if the caller parsed it already."""
        subnets = subnets or self.keys.parse(kv.key)
        bad: BadLease | None = None
        if subnets is None:
            bad = BadLease(kv.key, None, "not a subnet lease key", kv.mod_revision)
        elif kv.oversized:
            reason = "value too large to receive (over the gRPC receive limit)"
            bad = BadLease(kv.key, subnets[0], reason, kv.mod_revision, subnets[1])
        else:
            try:
                attrs = LeaseAttrs.from_json(kv.value)
            except LeaseDecodeError as exc:
                bad = BadLease(kv.key, subnets[0], str(exc)[:300], kv.mod_revision, subnets[1])
            else:
                self._bad.cleared(kv.key)
                return Lease(subnets[0], attrs, None, kv.lease_id, subnets[1], kv.mod_revision)
        if track:
            self._bad.seen(bad)
        return bad

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
    def __init__(self, registry: EtcdRegistry, stream: EtcdWatchStream, key: LeaseKey | None):
        self._registry = registry
        self._stream = stream
        self._key = key

    @property
    def established(self) -> bool:
        return self._stream.established

    def next_changes(self, timeout: float) -> list[Change]:
        changes = []
        for event in self._stream.next_events(timeout):
            subnets = self._registry.keys.parse(event.kv.key)
            if subnets is None:
                continue
            v4, v6 = subnets
            if self._key is not None and not key_matches(LeaseKey.of(v4, v6), self._key):
                continue
            revision = event.kv.mod_revision
            if event.deleted:
                self._registry._bad.cleared(event.kv.key)
                changes.append(Change(v4, None, revision, ipv6_subnet=v6))
                continue
            decoded = self._registry._decode(event.kv, subnets=subnets)
            if isinstance(decoded, Lease):
                changes.append(Change(v4, decoded, revision, ipv6_subnet=v6))
            else:  # the key now holds a bad value: for the peers it is gone
                changes.append(Change(v4, None, revision, decoded.reason, v6))
        return changes

    def close(self) -> None:
        self._stream.close()


def key_matches(found: LeaseKey, wanted: LeaseKey) -> bool:
    """`found` is the lease `wanted` names; an IPv4-only `wanted` also names its dual-stack key."""
    if wanted.v6 is None:
        return found.v4 == wanted.v4
    return found == wanted
