"""Resumable lease watches and the peer events derived from them (docs/flannel-compat.md §5).

``lease_changes`` is the low-level stream: a Snapshot (list + revision R),
then the changes from R+1 on.  Every change moves the resume point to its
revision + 1, so a reconnect neither skips nor repeats a change.  On
compaction it re-lists and yields a new Snapshot; on a dropped connection it
reconnects with backoff from 100 ms doubling to 5 s.  While idle or backing
off it yields empty lists, so a consumer with timers (the LeaseKeeper) never
blocks for long.

When etcd is recreated without its data (a new, empty cluster on the same
endpoint), resuming from the old revision would wait silently until the new
cluster's revision catches up.  The watch notices that the cluster's revision
(the response header) is below the last one seen (ClusterReset), re-lists and
yields a Snapshot marked ``reset``.

``watch_events`` turns that stream into peer Events: a snapshot is diffed
against the peers already known, comparing attributes too (Flannel ignores a
MAC or IP change made during the gap), and ``Event.previous`` carries the old
attributes on removal and change so backends can delete stale kernel entries.
A put that makes a peer's value undecodable (a bad lease) is a removal too.
After a reset, the peers missing from the new (empty) cluster are held, not
removed: they re-register on their own once the operator has put the network
config back, and removing them meanwhile would cut every pod off its peers.
A held peer that has not re-registered ``reset_grace_s`` after the config is
readable again is REMOVED.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network

from flannelish.errors import EtcdAuthError, EtcdError
from flannelish.subnet.keys import LeaseKey, as_key
from flannelish.subnet.lease import Event, EventType, Lease
from flannelish.subnet.registry import (
    Change,
    ClusterReset,
    HistoryCompacted,
    Registry,
    WatchResponseTooLarge,
    key_matches,
)

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
POLL_S = 0.25
REPORT_EVERY_S = 30.0
RESET_GRACE_S = 60.0  # held peers of a reset etcd: removed this long after the config is back
CONFIG_CHECK_S = 1.0  # how often held peers look for the network config

Own = IPv4Network | LeaseKey
Exclude = Own | Callable[[], Own | None] | None


@dataclass(frozen=True)
class Snapshot:
    leases: list[Lease]
    revision: int
    reset: bool = False  # re-listed because etcd was recreated without its data


def lease_changes(
    registry: Registry,
    stop: threading.Event,
    subnet: Own | None = None,
    label: str = "lease watch",
    initial: Snapshot | None = None,
) -> Iterator[Snapshot | list[Change]]:
    """Snapshot first, then lists of changes ([] when idle); returns when `stop` is set.

    `initial`: a listing the caller already has; it is the first snapshot and
    the watch starts right after its revision."""
    backoff = BACKOFF_MIN_S
    next_revision = 0  # 0: a snapshot is needed
    if initial is not None:
        leases = initial.leases
        if subnet is not None:
            leases = [x for x in leases if key_matches(x.key, as_key(subnet))]
        next_revision = initial.revision + 1
        yield Snapshot(leases, initial.revision)
    reset = False  # the next snapshot follows a ClusterReset
    outage_since: float | None = None
    last_report = 0.0
    while not stop.is_set():
        try:
            if not next_revision:
                leases, revision = registry.list_leases(subnet=subnet)
                next_revision = revision + 1
                snapshot, reset = Snapshot(leases, revision, reset), False
                yield snapshot
            stream = registry.watch(next_revision, subnet)
            try:
                while not stop.is_set():
                    changes = stream.next_changes(POLL_S)
                    if stream.established:  # etcd confirmed the watch: the outage is over
                        backoff = BACKOFF_MIN_S
                        if outage_since is not None:
                            log.info(
                                "%s resumed after %.1fs",
                                label,
                                time.monotonic() - outage_since,
                                extra={"resume_revision": next_revision},
                            )
                            outage_since = None
                    if changes:
                        next_revision = changes[-1].revision + 1
                    yield changes
            finally:
                stream.close()
        except HistoryCompacted as exc:
            log.warning(
                "%s fell behind etcd's compacted history; re-listing",
                label,
                extra={"resume_revision": next_revision, "compacted": exc.compact_revision},
            )
            next_revision = 0
        except WatchResponseTooLarge as exc:
            # Values too large for one response (a catch-up batch of big values): a paged
            # listing reads them, and the watch resumes after it.
            log.warning("%s: %s; re-listing", label, exc, extra={"resume_revision": next_revision})
            next_revision = 0
        except ClusterReset as exc:
            log.error(
                "%s: ETCD WAS RECREATED WITHOUT ITS DATA (revision %d, below %d seen before); "
                "re-listing, every lease must be registered again",
                label,
                exc.revision,
                exc.last_seen,
                extra={"resume_revision": next_revision, "revision": exc.revision},
            )
            next_revision, reset = 0, True
        except EtcdAuthError:
            raise
        except EtcdError as exc:
            if stop.is_set():
                return  # shutting down: the client was closed under us
            now = time.monotonic()
            if outage_since is None:
                outage_since = last_report = now
                log.warning("%s interrupted; reconnecting: %s", label, exc)
            elif now - last_report >= REPORT_EVERY_S:  # an outage: one line per 30 s, not per try
                last_report = now
                log.warning(
                    "%s still down after %.0fs; retrying every %.0fs: %s",
                    label,
                    now - outage_since,
                    backoff,
                    exc,
                )
            else:
                log.debug("%s reconnect failed: %s", label, exc)
            if stop.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            yield []


def watch_events(
    registry: Registry,
    stop: threading.Event,
    exclude: Exclude = None,
    reset_grace_s: float = RESET_GRACE_S,
    initial: Snapshot | None = None,
) -> Iterator[list[Event]]:
    """Peer events: the first batch is the snapshot (possibly empty), then live batches.

    `initial`: a listing to start from instead of listing again (see lease_changes)."""
    tracker = PeerTracker(exclude)
    held = HeldPeers(registry, reset_grace_s)
    synced = False  # the first batch must be a real listing, even an empty one
    for item in lease_changes(registry, stop, initial=initial):
        first = False
        if isinstance(item, Snapshot):
            events = _resync(tracker, held, item)
            first, synced = not synced, True
        else:
            held.release(c.key for c in item)
            events = tracker.apply(item)
        del item  # a listing holds every lease: not kept while the watch waits
        if not first:
            events += tracker.drop(held.expired())
        if events or first:
            yield events


def _resync(tracker: PeerTracker, held: HeldPeers, snapshot: Snapshot) -> list[Event]:
    """Events that bring the tracker to a fresh listing (peers of a reset etcd held)."""
    listed = {x.key for x in snapshot.leases}
    if snapshot.reset:
        held.hold(set(tracker.known) - listed)
    held.release(listed)
    return tracker.resync(snapshot.leases, keep=held.subnets)


class HeldPeers:
    """Peers that vanished with a reset etcd, kept until they re-register or time out.

    The grace period starts when the network config is readable again (before,
    no node can re-register, so an absence means nothing).
    """

    def __init__(self, registry: Registry, grace_s: float) -> None:
        self._registry = registry
        self.grace_s = grace_s
        self.subnets: set[LeaseKey] = set()
        self._config_since: float | None = None
        self._next_check = 0.0

    def hold(self, subnets: set[LeaseKey]) -> None:
        self._config_since, self._next_check = None, 0.0
        if not subnets:
            return
        self.subnets |= subnets
        log.warning(
            "keeping %d peer(s) that vanished with the old etcd data until they register "
            "again (removed %.0fs after the network config is back if they do not)",
            len(subnets),
            self.grace_s,
            extra={"peers": ",".join(sorted(str(x) for x in subnets))},
        )

    def release(self, subnets: Iterable[LeaseKey]) -> None:
        if self.subnets:
            self.subnets.difference_update(subnets)

    def expired(self) -> set[LeaseKey]:
        if not self.subnets:
            return set()
        now = time.monotonic()
        if self._config_since is None:
            if now < self._next_check:
                return set()
            self._next_check = now + CONFIG_CHECK_S
            try:
                if self._registry.get_config() is None:
                    return set()
            except EtcdError:
                return set()
            self._config_since = now
        if now - self._config_since < self.grace_s:
            return set()
        gone, self.subnets = self.subnets, set()
        log.warning(
            "%d peer(s) did not register again after etcd was recreated; removing them",
            len(gone),
            extra={"peers": ",".join(sorted(str(x) for x in gone))},
        )
        return gone


class PeerTracker:
    """The set of known peers, turning snapshots and changes into Events.

    `exclude` is our own subnet, or a function returning it: a node whose lease
    moved to another subnet then stops seeing its new subnet as a peer.
    """

    def __init__(self, exclude: Exclude = None):
        self._exclude = exclude
        self.known: dict[LeaseKey, Lease] = {}

    @property
    def exclude(self) -> LeaseKey | None:
        own = self._exclude() if callable(self._exclude) else self._exclude
        return as_key(own) if own is not None else None

    def _own(self, key: LeaseKey, own: LeaseKey | None) -> bool:
        return own is not None and key_matches(key, own)

    def resync(self, leases: list[Lease], keep: Collection[LeaseKey] = ()) -> list[Event]:
        """Diff a fresh listing against what we knew; known peers in `keep` stay known
        (no REMOVED) even if they are not listed."""
        own = self.exclude
        current = {x.key: x for x in leases if not self._own(x.key, own)}
        events = []
        for subnet, old in list(self.known.items()):
            if subnet in keep and not self._own(subnet, own):
                current.setdefault(subnet, old)
            elif subnet not in current:
                events.append(Event(EventType.REMOVED, old, old.attrs))
        for subnet, lease in current.items():
            before = self.known.get(subnet)
            if before is None:
                events.append(Event(EventType.ADDED, lease))
            elif before.attrs != lease.attrs:
                events.append(Event(EventType.ADDED, lease, before.attrs))
        self.known = current
        return events

    def drop(self, subnets: Iterable[LeaseKey]) -> list[Event]:
        """REMOVED for each of `subnets` that is known (held peers whose grace ran out)."""
        events = []
        for subnet in subnets:
            old = self.known.pop(subnet, None)
            if old is not None:
                events.append(Event(EventType.REMOVED, old, old.attrs))
        return events

    def apply(self, changes: list[Change]) -> list[Event]:
        events = []
        own = self.exclude
        for change in changes:
            key = change.key
            if self._own(key, own):
                continue
            old = self.known.get(key)
            new = change.lease
            if new is None:
                if old is not None:  # a removal of an unknown peer carries nothing useful
                    if change.bad:
                        # Its new value is undecodable: the old attributes are void, so the
                        # peer goes now (its routes with it), not at the next re-list.
                        log.warning(
                            "peer %s now has a bad lease value (%s); removing it",
                            key,
                            change.bad,
                        )
                    del self.known[key]
                    events.append(Event(EventType.REMOVED, old, old.attrs))
                continue
            self.known[key] = new
            previous = old.attrs if old is not None and old.attrs != new.attrs else None
            # A put with the same attributes is a renewal: still ADDED, as in Flannel.
            events.append(Event(EventType.ADDED, new, previous))
        return events
