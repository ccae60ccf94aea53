"""Desired state (from leases) vs actual kernel state, applied as a diff.

One pass:

1. every owner (the backend, later also e.g. an nftables table) repairs its
   base object (``ensure_base``; a rebuilt device comes back empty, so the
   diff below replays every peer - Flannel does not);
2. the desired objects are computed from the current peer leases, one group
   per peer, in apply order (VXLAN: neigh -> fdb -> route);
3. the owned objects are dumped from the kernel, one dump per resource kind;
4. :func:`diff` yields stale objects to delete and missing/changed objects to
   replace.  Deletions run first and in reverse kind order (route before
   neigh), so a changed MAC's old FDB entry is gone before the new one lands
   and the kernel never has a route without its neighbour.  Within a peer,
   a failed step skips that peer's later steps; the next pass retries.
   One exception: a peer whose changes only replace existing objects in
   place (same key, one object under it) is applied *before* the deletions.
   That is what a peer switching from VXLAN to a direct route needs (VXLAN
   DirectRouting): its route is re-pointed first, then its neighbour and FDB
   entries go, so no packet ever meets a route without its neighbour.

The diff is a pure function so it is unit-tested without a kernel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network
from typing import Any

from flannelish.errors import KernelError
from flannelish.kernel.resources import Owner, Resource, Skip
from flannelish.subnet.lease import Lease

log = logging.getLogger("flannelish.reconciler")

RETRY_SECONDS = 1.0  # after a pass with errors


@dataclass
class Diff:
    remove: list[Any] = field(default_factory=list)  # already in removal order
    apply: list[list[Any]] = field(default_factory=list)  # per peer, in apply order
    # per peer, in apply order, before `remove`: groups that only replace objects in place
    early: list[list[Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.remove and not any(self.apply) and not any(self.early)


def diff(
    resources: Sequence[Resource],
    desired_groups: Sequence[Sequence[Any]],
    actual: Mapping[str, Sequence[Any]],
) -> Diff:
    """Compare desired objects (grouped per peer) with the dumped ones (per resource kind).

    * an actual object whose key is not desired is removed;
    * an actual object that differs from the desired one under the same key
      is replaced in place, unless several actual objects share the key (an
      FDB MAC with two remotes): then all differing ones are removed first;
    * a desired object not present exactly is (re)applied; a peer's group
      goes to ``early`` (applied before the removals) when each of its
      objects replaces the single actual object under the same key.
    """
    by_type = {r.record: r for r in resources}
    desired: dict[tuple[str, Hashable], Any] = {}
    for group in desired_groups:
        for obj in group:
            res = by_type[type(obj)]
            desired.setdefault((res.kind, res.key(obj)), obj)

    result = Diff()
    present: set[Any] = set()
    in_place: set[tuple[str, Hashable]] = set()  # keys whose one object is replaced
    for res in reversed(resources):
        objs = actual.get(res.kind, ())
        counts = Counter(res.key(o) for o in objs)
        for obj in objs:
            k = res.key(obj)
            want = desired.get((res.kind, k))
            if want is None or (want != obj and counts[k] > 1):
                result.remove.append(obj)
            elif want == obj:
                present.add(obj)
            else:
                in_place.add((res.kind, k))
    for group in desired_groups:
        todo = [obj for obj in group if obj not in present]
        if not todo:
            continue
        slots = [(by_type[type(obj)].kind, by_type[type(obj)].key(obj)) for obj in todo]
        if result.remove and all(slot in in_place for slot in slots):
            result.early.append(todo)
        else:
            result.apply.append(todo)
    return result


_FIELDS: dict[type, tuple[str, ...]] = {}


def describe(obj: Any, prefix: str = "") -> dict[str, str]:
    """Structured log fields of a kernel record (names optionally prefixed)."""
    names = _FIELDS.get(type(obj))
    if names is None:
        names = _FIELDS[type(obj)] = tuple(f.name for f in fields(obj))
    return {prefix + name: str(getattr(obj, name)) for name in names}


@dataclass
class PassResult:
    changes: int = 0
    errors: int = 0
    rebuilt: bool = False
    skipped: int = 0
    seconds: float = 0.0


class Reconciler:
    """Brings the kernel in line with the peer leases, one pass at a time."""

    def __init__(self, owners: Sequence[Owner]) -> None:
        self.owners = list(owners)
        self._skip_logged: dict[IPv4Network, tuple[str, Any]] = {}

    def reconcile(self, peers: Sequence[Lease], check_base: bool = True) -> PassResult:
        """One pass; ``check_base=False`` skips the device check (lease-event passes:
        the device is re-checked on the periodic resync and on link notifications)."""
        started = time.monotonic()
        result = PassResult()
        for owner in self.owners:
            try:
                if check_base:
                    result.rebuilt |= owner.ensure_base()
            except KernelError as exc:
                log.error("cannot repair base object: %s", exc)
                result.errors += 1
                continue
            self._reconcile_owner(owner, peers, result)
        result.seconds = time.monotonic() - started
        return result

    def _reconcile_owner(self, owner: Owner, peers: Sequence[Lease], result: PassResult) -> None:
        resources = owner.resources()
        groups: list[Sequence[Any]] = []
        for peer in peers:
            planned = owner.plan(peer)
            if isinstance(planned, Skip):
                result.skipped += 1
                self._log_skip(peer, planned)
            else:
                self._skip_logged.pop(peer.subnet, None)
                groups.append(planned)
        actual: dict[str, Sequence[Any]] = {}
        for res in resources:
            try:
                actual[res.kind] = res.dump()
            except KernelError as exc:
                log.error("cannot list %s entries: %s", res.kind, exc)
                result.errors += 1
                return
        plan = diff(resources, groups, actual)
        by_type = {r.record: r for r in resources}
        self._apply(plan.early, by_type, result)
        for obj in plan.remove:
            res = by_type[type(obj)]
            try:
                res.remove(obj)
            except KernelError as exc:
                log.warning("cannot delete %s: %s", res.kind, exc, extra=describe(obj))
                result.errors += 1
                continue
            result.changes += 1
            log.info("deleted %s", res.kind, extra={"op": "delete", **describe(obj)})
        self._apply(plan.apply, by_type, result)

    def _apply(
        self, groups: Sequence[Sequence[Any]], by_type: Mapping[type, Resource], result: PassResult
    ) -> None:
        for group in groups:
            done: dict[str, str] = {}
            kinds = []
            for obj in group:
                res = by_type[type(obj)]
                try:
                    res.ensure(obj)
                except KernelError as exc:
                    log.warning("cannot set %s: %s", res.kind, exc, extra=describe(obj))
                    result.errors += 1
                    break  # the peer's later steps depend on this one
                result.changes += 1
                kinds.append(res.kind)
                done.update(describe(obj, prefix=f"{res.kind}_"))
            if kinds:
                # One line per peer listing every entry written (a cold start with
                # 1000 peers logs 1000 lines, not 3000).
                log.info("set %s", "+".join(kinds), extra={"op": "replace", **done})

    def _log_skip(self, peer: Lease, skip: Skip) -> None:
        # Once per peer and attributes, not once per resync.
        marker = (skip.reason, peer.attrs)
        if self._skip_logged.get(peer.subnet) != marker:
            self._skip_logged[peer.subnet] = marker
            log.warning("peer %s skipped: %s", peer.subnet, skip.reason)


class ReconcileLoop:
    """Runs reconcile passes on demand (lease events, kernel changes) and periodically.

    Triggers that arrive during a pass are coalesced into one more pass, so a
    burst of events costs at most two passes.
    """

    def __init__(
        self,
        reconciler: Reconciler,
        peers: Callable[[], Sequence[Lease]],
        interval: float,
        on_pass: Callable[[PassResult], None] | None = None,
        ready: Callable[[], bool] = lambda: True,
        name: str = "reconciler",
    ) -> None:
        self.reconciler = reconciler
        self._peers = peers
        self._ready = ready
        self.interval = interval
        self._on_pass = on_pass
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._base_due = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.passes = 0
        self.last: PassResult | None = None
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def trigger(self, check_base: bool = False) -> None:
        """Request a pass; ``check_base`` also re-checks the device (kernel link events)."""
        if check_base:
            self._base_due = True
        self._wake.set()

    def run_once(self, check_base: bool = True) -> PassResult:
        result = self.reconciler.reconcile(self._peers(), check_base)
        self.passes += 1
        self.last = result
        if result.changes or result.errors:
            log.info(
                "reconciled",
                extra={
                    "changes": result.changes,
                    "errors": result.errors,
                    "rebuilt": result.rebuilt,
                    "ms": round(result.seconds * 1000, 1),
                },
            )
        if self._on_pass is not None:
            self._on_pass(result)
        return result

    def _run(self) -> None:
        timeout = self.interval
        try:
            while not self._stop.is_set():
                if not self._wake.wait(timeout):
                    self._base_due = True  # periodic resync (or retry): check everything
                if self._stop.is_set():
                    return
                self._wake.clear()
                timeout = self.interval
                if self._ready():  # no pass before the peer set is known
                    check_base, self._base_due = self._base_due, False
                    if self.run_once(check_base).errors:
                        # A failed step is retried soon, not only at the next resync.
                        timeout = min(RETRY_SECONDS, self.interval)
        except BaseException as exc:  # reported by the node, which exits non-zero
            self.failure = exc
            log.exception("reconciler stopped")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
