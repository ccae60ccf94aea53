"""InMemoryRegistry: the Registry in a dict, for unit tests.

It keeps revisions, a change history and watches like etcd, and has hooks to
compact its history, drop watches, expire keys, fail calls and lose all its
data, so the watch's resume logic and the keeper's recovery can be exercised
without an etcd server.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

from flannelish.errors import EtcdError
from flannelish.subnet.etcdstore import ClusterReset, HistoryCompacted
from flannelish.subnet.keys import LeaseKey, as_key
from flannelish.subnet.lease import Lease, LeaseAttrs, LeaseDecodeError
from flannelish.subnet.registry import BadLease, BadLeases, Change, Listing, key_matches


class InMemoryRegistry:
    """A registry in a dict with revisions, a change history and watches.

    Test hooks: ``compact()`` drops history (watches from older revisions get
    HistoryCompacted), ``break_watches()`` ends every open watch with an
    EtcdError as a dropped connection would, ``expire(subnet)`` deletes a key
    as a TTL expiry would, ``fail_next(n)`` makes the next n calls raise
    EtcdError, and ``reset()`` simulates etcd recreated without its data (every
    key gone, the config too, revision restarting low, watches dropped).
    ``put_value(subnet, raw)`` writes a raw value as etcdctl would: a value
    that does not decode becomes a bad lease, exactly as EtcdRegistry sees it.
    """

    def __init__(self, key_prefix: str = "/coreos.com/network"):
        self.key_prefix = key_prefix
        self._cond = threading.Condition()
        self._config: bytes | None = None
        self._leases: dict[LeaseKey, Lease] = {}
        self._history: list[Change] = []
        self._revision = 1
        self._compacted = 0
        self._next_lease_id = 0x1000
        self._live_lease_ids: set[int] = set()
        self._watch_generation = 0
        self._fail_next = 0
        self._bad_keys: dict[LeaseKey, BadLease] = {}
        self._bad = BadLeases()

    @property
    def bad_leases(self) -> list[BadLease]:
        return self._bad.current()

    @property
    def bad_leases_total(self) -> int:
        return self._bad.total

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
            self._bad_keys.clear()
            self._history.clear()
            self._live_lease_ids.clear()
            self._revision = revision
            self._compacted = 0
            self._watch_generation += 1
            self._cond.notify_all()

    def expire(self, subnet: IPv4Network | LeaseKey) -> None:
        key = as_key(subnet)
        with self._cond:
            lease = self._find(key)
            if lease is not None:
                self._delete_locked(lease)
            elif key in self._bad_keys:
                self._revision += 1
                self._bad.cleared(self._bad_keys.pop(key).key)
                self._history.append(Change(key.subnet, None, self._revision, ipv6_subnet=key.v6))
                self._cond.notify_all()

    def put_value(
        self, subnet: IPv4Network | LeaseKey, raw: bytes | str, lease_id: int = 0
    ) -> Lease | None:
        """Unconditional write of a raw value; None if it is a bad lease (then tracked)."""
        try:
            attrs = LeaseAttrs.from_json(raw)
        except LeaseDecodeError as exc:
            key = as_key(subnet)
            with self._cond:
                self._revision += 1
                self._leases.pop(key, None)
                path = f"{self.key_prefix}/subnets/{key.etcd}"
                bad = BadLease(path, key.subnet, str(exc)[:300], self._revision, key.v6)
                self._bad_keys[key] = bad
                self._bad.seen(bad)
                self._history.append(Change(key.subnet, None, self._revision, bad.reason, key.v6))
                self._cond.notify_all()
            return None
        return self.put_raw(subnet, attrs, lease_id)

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

    def list_leases(
        self, with_expiry: bool = False, subnet: IPv4Network | LeaseKey | None = None
    ) -> tuple[list[Lease], int]:
        listing = self.list_all(with_expiry)
        if subnet is None:
            return listing.leases, listing.revision
        wanted = as_key(subnet)
        return [x for x in listing.leases if key_matches(x.key, wanted)], listing.revision

    def list_all(self, with_expiry: bool = False) -> Listing:
        self._maybe_fail()
        with self._cond:
            leases = sorted(self._leases.values(), key=lambda x: int(x.subnet.network_address))
            return Listing(leases, self._revision, list(self._bad_keys.values()))

    def leases_since(self, revision: int) -> list[Lease] | None:
        self._maybe_fail()
        with self._cond:
            return [x for x in self._leases.values() if x.mod_revision >= revision]

    def get_lease(self, subnet: IPv4Network | LeaseKey, with_expiry: bool = False) -> Lease | None:
        self._maybe_fail()
        with self._cond:
            return self._find(as_key(subnet))

    def create_lease(
        self, subnet: IPv4Network | LeaseKey, attrs: LeaseAttrs, ttl: int | None
    ) -> Lease | None:
        self._maybe_fail()
        key = as_key(subnet)
        with self._cond:
            if key in self._leases or key in self._bad_keys:
                return None
            return self._put_locked(key.subnet, key.v6, attrs, ttl)

    def replace_lease(self, current: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease | None:
        self._maybe_fail()
        with self._cond:
            existing = self._leases.get(current.key)
            if existing is None or existing.mod_revision != current.mod_revision:
                return None
            return self._put_locked(current.subnet, current.ipv6_subnet, attrs, ttl)

    def delete_lease(self, lease: Lease, only_if_unchanged: bool = True) -> bool:
        self._maybe_fail()
        with self._cond:
            existing = self._leases.get(lease.key)
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

    def put_raw(
        self, subnet: IPv4Network | LeaseKey, attrs: LeaseAttrs, lease_id: int = 0
    ) -> Lease:
        """Unconditional write, as an operator's etcdctl put would do."""
        key = as_key(subnet)
        with self._cond:
            lease = self._put_locked(key.subnet, key.v6, attrs, None)
            if lease_id:
                lease = replace(lease, lease_id=lease_id, expiration=time.time() + 86400)
                self._leases[key] = lease
            return lease

    def watch(
        self, start_revision: int, subnet: IPv4Network | LeaseKey | None = None
    ) -> _MemoryWatch:
        self._maybe_fail()
        return _MemoryWatch(self, start_revision, as_key(subnet) if subnet is not None else None)

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
        key = LeaseKey.of(subnet, ipv6_subnet)
        if self._bad_keys.pop(key, None) is not None:
            self._bad.cleared(f"{self.key_prefix}/subnets/{key.etcd}")
        lease = Lease(
            subnet,
            attrs,
            time.time() + ttl if ttl else None,
            lease_id,
            ipv6_subnet,
            self._revision,
        )
        self._leases[key] = lease
        self._history.append(Change(subnet, lease, self._revision, ipv6_subnet=ipv6_subnet))
        self._cond.notify_all()
        return lease

    def _delete_locked(self, lease: Lease) -> None:
        self._revision += 1
        del self._leases[lease.key]
        self._history.append(
            Change(lease.subnet, None, self._revision, ipv6_subnet=lease.ipv6_subnet)
        )
        self._cond.notify_all()

    def _find(self, key: LeaseKey) -> Lease | None:
        lease = self._leases.get(key)
        if lease is None and key.v6 is None:  # an IPv4 subnet also names its dual-stack key
            lease = next((x for x in self._leases.values() if key_matches(x.key, key)), None)
        return lease


class _MemoryWatch:
    def __init__(self, registry: InMemoryRegistry, start_revision: int, key: LeaseKey | None):
        self._reg = registry
        self._next = start_revision
        self._key = key
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
                    return [c for c in new if self._key is None or key_matches(c.key, self._key)]
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                reg._cond.wait(left)

    def close(self) -> None:
        self._closed = True
