"""Desired state (from admitted peer leases) vs kernel state, applied as a diff.

Two paths share one state (what we last wrote per peer, ``_OwnerState``):

* **Per lease event** (:meth:`Reconciler.apply_peers`): the changed peers
  are planned and written against what we last wrote for them; nothing is
  dumped, so one event costs one peer's work whatever the cluster size.
  Order within a peer: new slots first, then in-place replacements, then
  stale slots in reverse (a VXLAN peer turning direct gets its route
  re-pointed before its neighbour and FDB entries go, and vice versa).
* **Full pass** (:meth:`Reconciler.reconcile`; start-up, the periodic resync,
  kernel notifications, and 1 s after a write failed): every owner repairs
  its base object (a rebuilt device comes back empty, so the diff replays
  every peer); the desired objects of every peer are diffed (:func:`diff`)
  against one dump per resource kind; deletions run first and in reverse
  kind order, except peers whose changes only replace objects in place
  (applied before the deletions: DirectRouting switches).  The pass runs
  in slices of at most ``SLICE_SECONDS`` of work (planning, parsing the
  dumps, the diff, the writes) and calls ``between()`` after each, so a
  pending event is applied within one slice, never after the whole pass;
  slots and peers it touched are left to it for the rest of the pass (a
  pass never undoes an event's newer change).

Peers may share a slot (two leases advertising the same PublicIP share one
element of the nftables anti-spoof set): a slot is counted per programmed
peer, and the per-event path deletes it only when its last peer lets go.

In a full pass a failed step of a peer skips its later steps; per event a
peer's steps go in one datagram and a failure takes back what it created
(:meth:`Reconciler._write_peer`); either way the next full pass retries.
A route is replaced only where the kernel's route under that key is ours
(our route protocol in the dump); otherwise it is created exclusively and
a foreign route in the way makes the peer skipped
("conflict"), left alone; a peer whose route is blocked so is skipped before
any of its objects is written (no neighbour or FDB entry of a skipped peer),
and a pass writes nothing for it while the foreign route stays.  One
exception, for taking over from flanneld
(:meth:`flannelish.kernel.resources.RouteResource.create`): a foreign route
identical to ours except for its protocol (same destination, gateway,
device and onlink flag) is a predecessor's and is taken over in place.
The diff (flannelish.daemon.diff) is a pure function, unit-tested without
a kernel.

Longer than the usual ~450 lines: the two paths above share ``_OwnerState``
and must be read together to see that neither undoes the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flannelish.daemon.diff import describe, diff
from flannelish.daemon.peerlog import PER_PASS_PEER_LINES, PeerLog
from flannelish.errors import KernelError
from flannelish.kernel.netlink import SlotTaken
from flannelish.kernel.resources import Owner, Resource, Skip, batchable, write_many, write_steps
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Lease

log = logging.getLogger("flannelish.reconciler")

# A full pass lets pending events through after this much work: an event waits
# at most one slice behind a pass (plan, dump parsing, diff and writes are sliced).
SLICE_SECONDS = 0.002
# Peers a full pass writes per batch (one netlink datagram per step and resource
# kind).  Only a pass that writes many peers (start-up, a rebuilt device) fills
# batches; there an event waits for at most one batch in flight (~0.1 ms of
# kernel work per VXLAN peer: ~7 ms), and fewer, larger datagrams mean fewer GIL
# hand-offs: 16 peers per batch made the 5000-peer cold start ~0.4 s slower.
BATCH_PEERS = 64


@dataclass
class PassResult:
    changes: int = 0
    errors: int = 0
    rebuilt: bool = False
    skipped: int = 0
    seconds: float = 0.0
    full: bool = True  # a dump-and-diff pass (False: a per-event apply)
    needs_full: bool = False  # a per-event apply found something only a full pass can settle


Slot = tuple[str, Hashable]  # (resource kind, key): one kernel slot


@dataclass
class _OwnerState:
    # What we last wrote per peer and know to be in the kernel (the per-event
    # path diffs against this instead of dumping the kernel).
    programmed: dict[LeaseKey, tuple[Any, ...]] = field(default_factory=dict)
    skipped: dict[LeaseKey, Skip] = field(default_factory=dict)
    # How many programmed peers hold each slot (peers may share one: a PublicIP),
    # per resource kind, then per key: no (kind, key) tuple kept per object.
    refs: dict[str, dict[Hashable, int]] = field(default_factory=dict)


class _Slicer:
    """Calls ``between()`` once at least ``SLICE_SECONDS`` of work went by since the last call.

    ``tick()`` is called per unit of work (a peer planned, an entry parsed, a
    write); it is cheap when the slice is not over.
    """

    def __init__(self, between: Callable[[], object], seconds: float | None = None) -> None:
        self._between = between
        self._seconds = SLICE_SECONDS if seconds is None else seconds
        self._last = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        if now - self._last >= self._seconds:
            self._between()
            self._last = time.perf_counter()

    def now(self) -> None:
        self._between()
        self._last = time.perf_counter()


class Reconciler:
    """Brings the kernel in line with the peer leases.

    Two ways, one state:

    * :meth:`apply_peers` (per lease event): plans the changed peers only and
      writes the difference to what it last wrote for them; cost independent
      of the number of peers.
    * :meth:`reconcile` (start-up, periodic resync, kernel notifications):
      the full dump-and-diff pass, the safety net that repairs drift.  It
      calls ``between()`` at a few points so pending events are applied
      without waiting for the pass; slots those events touched are left to
      them for the rest of the pass.

    A route is only ever replaced when the kernel's route under that key is
    ours (our route protocol) or identical to ours but for its protocol (a
    predecessor's, e.g. flanneld's); otherwise it is created exclusively, and
    a foreign route in the way makes the peer skipped ("conflict"), leaving
    the foreign route alone.
    """

    def __init__(self, owners: Sequence[Owner]) -> None:
        self.owners = list(owners)
        self._state = [_OwnerState() for _ in self.owners]
        self._skip_logged: dict[LeaseKey, tuple[str, Any]] = {}
        self._touched: set[Slot] | None = None  # slots events changed during a full pass
        self._touched_peers: set[LeaseKey] = set()
        self._peer_log = PeerLog()  # events: every peer at info

    @property
    def skipped(self) -> dict[LeaseKey, Skip]:
        """Peers some owner does not program, with the reason."""
        out: dict[LeaseKey, Skip] = {}
        for state in self._state:
            out.update(state.skipped)
        return out

    def programmed(self, owner_index: int = 0) -> dict[LeaseKey, tuple[Any, ...]]:
        return dict(self._state[owner_index].programmed)

    # -- full pass ----------------------------------------------------------------
    def reconcile(
        self,
        peers: Sequence[Lease],
        check_base: bool = True,
        between: Callable[[], object] | None = None,
    ) -> PassResult:
        """One full pass; ``check_base=False`` skips the device check."""
        started = time.monotonic()
        result = PassResult()
        self._touched, self._touched_peers = set(), set()
        slicer = _Slicer(between or (lambda: None))
        self._peer_log = PeerLog(PER_PASS_PEER_LINES)
        try:
            for owner, state in zip(self.owners, self._state, strict=True):
                try:
                    if check_base:
                        result.rebuilt |= owner.ensure_base()
                except KernelError as exc:
                    log.error("cannot repair base object: %s", exc)
                    result.errors += 1
                    continue
                self._full(owner, state, peers, result, slicer)
        finally:
            self._touched = None
            self._peer_log.summary()
            self._peer_log = PeerLog()
        result.skipped = len(self.skipped)
        result.seconds = time.monotonic() - started
        return result

    def _full(
        self,
        owner: Owner,
        state: _OwnerState,
        peers: Sequence[Lease],
        result: PassResult,
        slicer: _Slicer,
    ) -> None:
        resources = owner.resources()
        groups: list[tuple[Any, ...]] = []
        subnets: list[LeaseKey] = []
        skipped: dict[LeaseKey, Skip] = {}
        tick = slicer.tick
        for peer in peers:
            planned = owner.plan(peer)
            if isinstance(planned, Skip):
                skipped[peer.key] = planned
                self._log_skip(peer, planned)
            else:
                groups.append(tuple(planned))
                subnets.append(peer.key)
            tick()
        actual: dict[str, Sequence[Any]] = {}
        for res in resources:
            try:
                # The kernel's answer is read at once; parsing it is sliced.  Slots
                # events change meanwhile are left to them.
                actual[res.kind] = res.dump(tick)
            except KernelError as exc:
                log.error("cannot list %s entries: %s", res.kind, exc)
                result.errors += 1
                return
            tick()
        plan = diff(resources, groups, actual, tick)
        slicer.now()
        by_type = {r.record: r for r in resources}
        owned: set[Slot] = set()  # only needed (and built) when the pass writes
        if plan.early or plan.apply:
            for r in resources:
                for o in actual.get(r.kind, ()):
                    tick()
                    owned.add((r.kind, r.key(o)))
        failed: set[LeaseKey] = set()
        early = list(zip(plan.early_peers, plan.early, strict=True))
        self._apply_groups(early, by_type, owned, subnets, groups, failed, skipped, result, tick)
        for obj in plan.remove:
            res = by_type[type(obj)]
            tick()
            if self._touched and (res.kind, res.key(obj)) in self._touched:
                continue  # an event rewrote this slot meanwhile
            try:
                res.remove(obj)
            except KernelError as exc:
                log.warning("cannot delete %s: %s", res.kind, exc, extra=describe(obj))
                result.errors += 1
                continue
            result.changes += 1
            log.info("deleted %s", res.kind, extra={"op": "delete", **describe(obj)})
        later = list(zip(plan.apply_peers, plan.apply, strict=True))
        self._apply_groups(later, by_type, owned, subnets, groups, failed, skipped, result, tick)
        # What the kernel now holds per peer, updated in place (sliced: events
        # may still come; a peer an event changed keeps what the event path
        # recorded).  A peer whose objects did not change keeps its old records:
        # a quiet pass stores nothing new, so the long-lived state never moves
        # into the memory the pass's temporaries took (docs/architecture.md).
        touched = self._touched_peers
        written: set[LeaseKey] = set()
        for subnet, group in zip(subnets, groups, strict=True):
            tick()
            if subnet in failed or subnet in touched:
                continue
            written.add(subnet)
            old = state.programmed.get(subnet)
            if old != group:
                _record(state, by_type, subnet, group)
        for subnet in list(state.programmed):
            tick()
            if subnet not in written and subnet not in touched:
                _record(state, by_type, subnet, None)
        for subnet in touched:
            if subnet in state.skipped and subnet not in skipped:
                skipped[subnet] = state.skipped[subnet]
        state.skipped = skipped
        for subnet in list(self._skip_logged):
            if subnet not in skipped:
                del self._skip_logged[subnet]

    def _apply_groups(
        self,
        todo: Sequence[tuple[int, Sequence[Any]]],
        by_type: Mapping[type, Resource],
        owned: set[Slot],
        subnets: Sequence[LeaseKey],
        groups: Sequence[Sequence[Any]],
        failed: set[LeaseKey],
        skipped: dict[LeaseKey, Skip],
        result: PassResult,
        tick: Callable[[], None],
    ) -> None:
        for first in range(0, len(todo), BATCH_PEERS):
            tick()
            chunk = [
                (group_index, objs)
                for group_index, objs in todo[first : first + BATCH_PEERS]
                if subnets[group_index] not in self._touched_peers
                and subnets[group_index] not in failed
            ]
            skips = self._write_groups([objs for _, objs in chunk], by_type, owned, result)
            for (group_index, _), skip in zip(chunk, skips, strict=True):
                if skip is not None:
                    subnet = subnets[group_index]
                    failed.add(subnet)
                    if skip.kind == "conflict":
                        skipped[subnet] = skip
                        self._log_skip_subnet(subnet, groups[group_index], skip)

    def _write_peer(
        self,
        objs: Sequence[Any],
        by_type: Mapping[type, Resource],
        owned: Mapping[Slot, Any],
        result: PassResult,
    ) -> Skip | None:
        """Write one peer's objects in order (the per-event path); None when all were written.

        Where its resources allow, all go in one netlink datagram: one round trip
        per event instead of one per object.  The kernel applies them in order
        (the route after the neighbour and FDB entry it needs) but does not stop
        at a failed one, so a failure takes back the objects this write created
        (a peer skipped for a foreign route leaves no neighbour or FDB entry) and
        leaves the rest to a full pass.  A foreign route known from the last
        pass's listing is confirmed with one look-up before the peer is skipped;
        one added since makes the route's exclusive create fail instead.
        """
        steps = [(by_type[type(o)], o, "ensure" if _slot(by_type, o) in owned else "create")
                 for o in objs]  # fmt: skip
        if not batchable(steps):  # e.g. WireGuard's UAPI: step by step, as a pass writes
            return self._write_groups([objs], by_type, owned, result, look_up=True)[0]
        if _blocked(objs, by_type, owned, look_up=False) is not None:
            what = _blocked(objs, by_type, owned, look_up=True)
            if what is not None:
                return _conflict(what)
        errors = write_steps(steps)
        if not any(errors):
            result.changes += len(steps)
            self._peer_log.written([(res.kind, obj) for res, obj, _ in steps])
            return None
        created = [
            (res, obj, "remove")
            for (res, obj, action), error in zip(steps, errors, strict=True)
            if error is None and action == "create"
        ][::-1]
        for (res, obj, _), error in zip(created, write_steps(created), strict=True):
            if error is not None:  # the full pass that follows finds it
                log.warning("cannot delete %s: %s", res.kind, error, extra=describe(obj))
                result.errors += 1
        skip: Skip | None = None
        for (res, obj, _), error in zip(steps, errors, strict=True):
            if isinstance(error, SlotTaken):
                skip = skip or _conflict(error.what)
            elif error is not None:
                log.warning("cannot set %s: %s", res.kind, error, extra=describe(obj))
                result.errors += 1
                skip = skip or Skip(str(error), "error")
        return skip

    def _write_groups(
        self,
        groups: Sequence[Sequence[Any]],
        by_type: Mapping[type, Resource],
        owned: set[Slot] | Mapping[Slot, Any],
        result: PassResult,
        look_up: bool = False,
    ) -> list[Skip | None]:
        """Write each peer's objects in order; a failed step stops that peer's later steps.

        Per peer None when all were written, else a Skip (``conflict`` for a
        foreign object in the way, ``error`` for a failed write).  A peer whose
        new route a foreign one blocks (known from the pass's dump, or with
        ``look_up`` one route look-up) is skipped before any of its objects is
        written: a skipped peer leaves no neighbour or FDB entry.  Step k of
        every peer still going is one batch per resource kind
        (:func:`write_many`: a few netlink round trips for hundreds of peers,
        instead of one per object).
        """
        outcomes: list[Skip | None] = [None] * len(groups)
        done: list[list[tuple[str, Any]]] = [[] for _ in groups]  # (kind, object) written
        for i, objs in enumerate(groups):  # a foreign route in the way: write none of it
            what = _blocked(objs, by_type, owned, look_up)
            if what is not None:
                outcomes[i] = _conflict(what)
        going = [i for i, objs in enumerate(groups) if objs and outcomes[i] is None]
        step = 0
        while going:
            by_res: dict[str, list[int]] = {}
            for i in going:
                by_res.setdefault(by_type[type(groups[i][step])].kind, []).append(i)
            for members in by_res.values():
                res = by_type[type(groups[members[0]][step])]
                objs = [groups[i][step] for i in members]
                # Nothing of ours in the kernel (a cold start): every write is a create.
                items = [(obj, not owned or (res.kind, res.key(obj)) not in owned) for obj in objs]
                for i, (obj, _), error in zip(members, items, write_many(res, items), strict=True):
                    if error is None:
                        result.changes += 1
                        done[i].append((res.kind, obj))
                    elif isinstance(error, SlotTaken):
                        outcomes[i] = _conflict(error.what)
                    else:
                        log.warning("cannot set %s: %s", res.kind, error, extra=describe(obj))
                        result.errors += 1
                        outcomes[i] = Skip(str(error), "error")
            step += 1
            going = [i for i in going if outcomes[i] is None and step < len(groups[i])]
        for written in done:
            if written:
                self._peer_log.written(written)
        return outcomes

    # -- per-event path -------------------------------------------------------------
    def holds(self, kind: str, key: Hashable) -> bool:
        """Whether a programmed peer holds this slot (e.g. an nft set element)."""
        return any(_held(state.refs, (kind, key)) for state in self._state)

    def apply_peers(
        self, subnets: Iterable[LeaseKey], lookup: Callable[[LeaseKey], Lease | None]
    ) -> PassResult:
        """Program exactly these peers (added, changed or removed) against what we last wrote."""
        started = time.monotonic()
        result = PassResult(full=False)
        # An event between the slices of a full pass still names its peers at info.
        pass_log, self._peer_log = self._peer_log, PeerLog()
        try:
            for owner, state in zip(self.owners, self._state, strict=True):
                # An owner may write single events differently from a pass (the nft
                # owner batches a pass's elements into one transaction).
                resources = getattr(owner, "event_resources", owner.resources)()
                by_type = {r.record: r for r in resources}
                for subnet in subnets:
                    self._apply_peer(owner, state, subnet, lookup(subnet), by_type, result)
        finally:
            self._peer_log = pass_log
        result.skipped = len(self.skipped)
        result.seconds = time.monotonic() - started
        return result

    def _apply_peer(
        self,
        owner: Owner,
        state: _OwnerState,
        subnet: LeaseKey,
        peer: Lease | None,
        by_type: Mapping[type, Resource],
        result: PassResult,
    ) -> None:
        old = state.programmed.pop(subnet, None)
        for obj in old or ():
            _ref(state.refs, _slot(by_type, obj), -1)  # before any delete: see holds()
        new: tuple[Any, ...] = ()
        state.skipped.pop(subnet, None)
        if peer is not None:
            planned = owner.plan(peer)
            if isinstance(planned, Skip):
                state.skipped[subnet] = planned
                self._log_skip(peer, planned)
            else:
                new = tuple(planned)
                self._skip_logged.pop(subnet, None)
        else:
            self._skip_logged.pop(subnet, None)
        if old is None and peer is None:
            result.needs_full = True  # unknown leftovers (a failed write): the full pass finds them
            return
        if self._touched is not None:
            self._touched_peers.add(subnet)
            for obj in (*(old or ()), *new):
                res = by_type.get(type(obj))
                if res is not None:
                    self._touched.add((res.kind, res.key(obj)))
        old_slots = {_slot(by_type, o): o for o in old or ()}
        new_slots = {_slot(by_type, o) for o in new}
        # New slots first (in the peer's order), then in-place replacements, then
        # stale slots in reverse: a VXLAN peer turning direct gets its route
        # re-pointed before its neighbour and FDB entry go, and vice versa.
        fresh = [o for o in new if _slot(by_type, o) not in old_slots]
        changed = [
            o for o in new if _slot(by_type, o) in old_slots and old_slots[_slot(by_type, o)] != o
        ]
        skip = None
        if fresh or changed:
            skip = self._write_peer(fresh + changed, by_type, old_slots, result)
        if skip is not None:
            if skip.kind == "conflict" and old is None:
                # Maybe our own route from an earlier failed write: the full
                # pass knows which routes are ours and decides.
                result.needs_full = True
            elif skip.kind == "conflict":
                state.skipped[subnet] = skip
            else:
                result.needs_full = True
            return
        stale = [
            (by_type[type(obj)], obj, "remove")
            for obj in reversed(old or ())
            if _slot(by_type, obj) not in new_slots  # still wanted by this peer,
            and not _held(state.refs, _slot(by_type, obj))  # or by another sharing it
        ]
        for (res, obj, _), error in zip(stale, write_steps(stale), strict=True):
            if error is not None:
                log.warning("cannot delete %s: %s", res.kind, error, extra=describe(obj))
                result.errors += 1
                result.needs_full = True
                continue
            result.changes += 1
            log.info("deleted %s", res.kind, extra={"op": "delete", **describe(obj)})
        if new:
            state.programmed[subnet] = new
            for slot in new_slots:
                _ref(state.refs, slot, 1)

    def _log_skip(self, peer: Lease, skip: Skip) -> None:
        # Once per peer and attributes, not once per resync.
        marker = (skip.reason, peer.attrs)
        if self._skip_logged.get(peer.key) != marker:
            self._skip_logged[peer.key] = marker
            log.warning("peer %s skipped: %s", peer.key, skip.reason)

    def _log_skip_subnet(self, subnet: LeaseKey, group: Sequence[Any], skip: Skip) -> None:
        marker = (skip.reason, tuple(group))
        if self._skip_logged.get(subnet) != marker:
            self._skip_logged[subnet] = marker
            log.warning("peer %s skipped: %s", subnet, skip.reason)


def _conflict(what: str) -> Skip:
    """``what``: the foreign object in the way, "a route to 10.244.3.0/24"."""
    return Skip(
        f"the kernel already has {what} that flannelish does not own; left alone", "conflict"
    )


def _blocked(
    objs: Sequence[Any], by_type: Mapping[type, Resource], owned: Any, look_up: bool
) -> str | None:
    """The foreign object in the way of the first of these objects one blocks ("a route
    to 10.244.3.0/24", "nexthop id 1115684880"; see RouteResource.blocked)."""
    for obj in objs:
        res = by_type[type(obj)]
        blocked = getattr(res, "blocked", None)
        if blocked is None:
            continue
        what = blocked(obj, look_up, new=not owned or (res.kind, res.key(obj)) not in owned)
        if what is not None:
            return str(what)
    return None


def _record(
    state: _OwnerState,
    by_type: Mapping[type, Resource],
    subnet: LeaseKey,
    group: tuple[Any, ...] | None,
) -> None:
    """Record `group` (None: nothing) as what the kernel holds for `subnet`, slots counted."""
    for obj in state.programmed.pop(subnet, ()):
        _ref(state.refs, _slot(by_type, obj), -1)
    if group is not None:
        state.programmed[subnet] = group
        for obj in group:
            _ref(state.refs, _slot(by_type, obj), 1)


def _slot(by_type: Mapping[type, Resource], obj: Any) -> Slot:
    res = by_type[type(obj)]
    return (res.kind, res.key(obj))


def _ref(refs: dict[str, dict[Hashable, int]], slot: Slot, change: int) -> None:
    """Count one more (1) or one fewer (-1) peer holding `slot`; none left: forgotten."""
    kind, key = slot
    counts = refs.setdefault(kind, {})
    count = counts.get(key, 0) + change
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)


def _held(refs: dict[str, dict[Hashable, int]], slot: Slot) -> bool:
    return refs.get(slot[0], {}).get(slot[1], 0) > 0
