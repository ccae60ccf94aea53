"""Resumable lease watches and the peer events derived from them (flannel.md §1.6).

``lease_changes`` is the low-level stream: a Snapshot (list + revision R),
then the changes from R+1 on.  Every change moves the resume point to its
revision + 1, so a reconnect neither skips nor repeats a change.  On
compaction it re-lists and yields a new Snapshot; on a dropped connection it
reconnects with backoff from 100 ms doubling to 5 s.  While idle or backing
off it yields empty lists, so a consumer with timers (the LeaseKeeper) never
blocks for long.

``watch_events`` turns that stream into peer Events: a snapshot is diffed
against the peers already known, comparing attributes too (Flannel ignores a
MAC or IP change made during the gap), and ``Event.previous`` carries the old
attributes on removal and change so backends can delete stale kernel entries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network

from flannelish.errors import EtcdAuthError, EtcdError
from flannelish.subnet.lease import Event, EventType, Lease
from flannelish.subnet.registry import Change, HistoryCompacted, Registry

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
POLL_S = 0.25
REPORT_EVERY_S = 30.0

Exclude = IPv4Network | Callable[[], IPv4Network | None] | None


@dataclass(frozen=True)
class Snapshot:
    leases: list[Lease]
    revision: int


def lease_changes(
    registry: Registry,
    stop: threading.Event,
    subnet: IPv4Network | None = None,
    label: str = "lease watch",
) -> Iterator[Snapshot | list[Change]]:
    """Snapshot first, then lists of changes ([] when idle); returns when `stop` is set."""
    backoff = BACKOFF_MIN_S
    next_revision = 0  # 0: a snapshot is needed
    outage_since: float | None = None
    last_report = 0.0
    while not stop.is_set():
        try:
            if not next_revision:
                leases, revision = registry.list_leases()
                if subnet is not None:
                    leases = [x for x in leases if x.subnet == subnet]
                next_revision = revision + 1
                yield Snapshot(leases, revision)
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
    registry: Registry, stop: threading.Event, exclude: Exclude = None
) -> Iterator[list[Event]]:
    """Peer events: the first batch is the snapshot (possibly empty), then live batches."""
    tracker = PeerTracker(exclude)
    synced = False  # the first batch must be a real listing, even an empty one
    for item in lease_changes(registry, stop):
        if isinstance(item, Snapshot):
            events = tracker.resync(item.leases)
            if not synced:
                synced = True
                yield events
                continue
        else:
            events = tracker.apply(item)
        if events:
            yield events


class PeerTracker:
    """The set of known peers, turning snapshots and changes into Events.

    `exclude` is our own subnet, or a function returning it: a node whose lease
    moved to another subnet then stops seeing its new subnet as a peer.
    """

    def __init__(self, exclude: Exclude = None):
        self._exclude = exclude
        self.known: dict[IPv4Network, Lease] = {}

    @property
    def exclude(self) -> IPv4Network | None:
        return self._exclude() if callable(self._exclude) else self._exclude

    def resync(self, leases: list[Lease]) -> list[Event]:
        """Diff a fresh listing against what we knew."""
        own = self.exclude
        current = {x.subnet: x for x in leases if x.subnet != own}
        events = []
        for subnet, old in list(self.known.items()):
            if subnet not in current:
                events.append(Event(EventType.REMOVED, old, old.attrs))
        for subnet, lease in current.items():
            before = self.known.get(subnet)
            if before is None:
                events.append(Event(EventType.ADDED, lease))
            elif before.attrs != lease.attrs:
                events.append(Event(EventType.ADDED, lease, before.attrs))
        self.known = current
        return events

    def apply(self, changes: list[Change]) -> list[Event]:
        events = []
        own = self.exclude
        for change in changes:
            if change.subnet == own:
                continue
            old = self.known.get(change.subnet)
            new = change.lease
            if new is None:
                if old is not None:  # a removal of an unknown peer carries nothing useful
                    del self.known[change.subnet]
                    events.append(Event(EventType.REMOVED, old, old.attrs))
                continue
            self.known[change.subnet] = new
            previous = old.attrs if old is not None and old.attrs != new.attrs else None
            # A put with the same attributes is a renewal: still ADDED, as in Flannel.
            events.append(Event(EventType.ADDED, new, previous))
        return events
