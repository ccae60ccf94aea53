"""The set of peer leases the node currently knows, fed by lease watch events.

Thread-safe: the watch thread applies events, the reconcile loops read.
Every lease passes :mod:`flannelish.daemon.admission` first; a rejected one
is kept apart with its reason (``flannelish status``, ``/metrics``) and never
reaches a reconciler.  Our own subnet is always left out (a peer route to
ourselves would black-hole local pods).

:meth:`PeerTable.apply` returns the subnets whose admitted lease changed, so
the reconcile loops program exactly those peers (one lease event costs one
peer's work, not a pass over every peer).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from flannelish.daemon.admission import AdmissionRules, check_lease
from flannelish.kernel.monitor import Deleted
from flannelish.kernel.resources import Skip
from flannelish.subnet.keys import LeaseKey, as_key
from flannelish.subnet.lease import Event, EventType, Lease


class PeerTable:
    def __init__(
        self, own_subnet: LeaseKey | IPv4Network | None = None, rules: AdmissionRules | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._peers: dict[LeaseKey, Lease] = {}  # admitted
        self._subnets: dict[IPv4Network | IPv6Network, LeaseKey] = {}  # either half -> key
        self._rejected: dict[LeaseKey, tuple[Lease, Skip]] = {}
        self._holder: dict[Hashable, LeaseKey] = {}  # claim -> admitted subnet holding it
        self._held: dict[LeaseKey, tuple[Hashable, ...]] = {}  # admitted subnet -> its claims
        self._families = [0, 0]  # admitted peers with an IPv4 half, with an IPv6 half
        self.own_subnet = as_key(own_subnet) if own_subnet is not None else None
        self.rules = rules
        # Set once the watch's first batch (the snapshot) is in.  Before that an
        # empty table means "not known yet", not "no peers": reconciling then
        # would delete every peer's entries on a daemon restart.
        self.synced = threading.Event()

    def set_rules(self, rules: AdmissionRules) -> None:
        """Install (or change) the admission rules and re-check every known lease."""
        with self._lock:
            self.rules = rules
            leases = [*self._peers.values(), *(lease for lease, _ in self._rejected.values())]
            self._peers.clear()
            self._subnets.clear()
            self._rejected.clear()
            self._holder.clear()
            self._held.clear()
            self._families = [0, 0]
            for lease in sorted(leases, key=_age):
                self._admit(lease)

    def apply(self, events: Iterable[Event]) -> set[LeaseKey]:
        """Apply a batch; returns the subnets whose admitted lease was added, changed or removed.

        The first batch (the snapshot) always counts as a change of the table.
        """
        changed: set[LeaseKey] = set()
        with self._lock:
            batch = list(events)
            # Older leases first, so the older holder of a claim keeps it.
            for event in sorted(batch, key=lambda e: _age(e.lease)):
                subnet = event.lease.key
                if subnet == self.own_subnet:
                    continue
                if event.type is EventType.REMOVED:
                    self._rejected.pop(subnet, None)
                    if subnet in self._peers:
                        changed.add(subnet)
                        changed |= self._wake(self._drop(subnet))
                elif self._peers.get(subnet) != event.lease:
                    freed = self._drop(subnet) if subnet in self._peers else set()
                    self._rejected.pop(subnet, None)
                    if self._admit(event.lease) or freed:
                        changed.add(subnet)
                    # Claims the new version no longer holds go to whoever waits for them.
                    changed |= self._wake({c for c in freed if c not in self._holder})
        if not self.synced.is_set():
            self.synced.set()
        return changed

    def _admit(self, lease: Lease) -> bool:
        rules = self.rules
        skip = check_lease(lease, rules) if rules is not None else None
        claims = rules.claims(lease) if rules is not None and skip is None else ()
        for claim in claims:
            holder = self._holder.get(claim)
            if holder is not None and holder != lease.key:
                skip = Skip(f"{_claim_text(claim)} is already used by peer {holder}", "duplicate")
                break
        if skip is not None:
            self._rejected[lease.key] = (lease, skip)
            return False
        self._peers[lease.key] = lease
        self._subnets.update((s, lease.key) for s in (lease.key.v4, lease.key.v6) if s)
        self._count(lease.key, 1)
        self._held[lease.key] = tuple(claims)
        for claim in claims:
            self._holder[claim] = lease.key
        return True

    def _drop(self, subnet: LeaseKey) -> set[Hashable]:
        """Forget an admitted peer; returns the claims it held."""
        gone = self._peers.pop(subnet)
        self._count(gone.key, -1)
        for half in (gone.key.v4, gone.key.v6):
            self._subnets.pop(half, None)  # type: ignore[arg-type]
        freed = set(self._held.pop(subnet, ()))
        for claim in freed:
            del self._holder[claim]
        return freed

    def _count(self, key: LeaseKey, step: int) -> None:
        self._families[0] += step if key.v4 is not None else 0
        self._families[1] += step if key.v6 is not None else 0

    def family_counts(self) -> tuple[int, int]:
        """Admitted peers with an IPv4 half and with an IPv6 half (kept per event: O(1))."""
        with self._lock:
            return self._families[0], self._families[1]

    def _wake(self, freed: set[Hashable]) -> set[LeaseKey]:
        """Peers rejected for a claim that is free now get another chance."""
        rules = self.rules
        if not freed or rules is None:
            return set()
        waiting = [
            lease
            for lease, skip in self._rejected.values()
            if skip.kind == "duplicate" and freed & set(rules.claims(lease))
        ]
        admitted = set()
        for lease in sorted(waiting, key=_age):
            del self._rejected[lease.key]
            if self._admit(lease):
                admitted.add(lease.key)
        return admitted

    def set_own_subnet(self, own: LeaseKey | IPv4Network) -> None:
        subnet = as_key(own)
        with self._lock:
            self.own_subnet = subnet
            if subnet in self._peers:
                self._drop(subnet)
            self._rejected.pop(subnet, None)
        if self.rules is not None:  # overlap checks depend on our subnet
            self.set_rules(self.rules)

    def get(self, key: LeaseKey | IPv4Network) -> Lease | None:
        with self._lock:
            return self._peers.get(as_key(key))

    def holds_subnet(self, subnet: IPv4Network | IPv6Network) -> bool:
        """Whether an admitted peer's lease has this IPv4 or IPv6 subnet (either half)."""
        with self._lock:
            return subnet in self._subnets

    def claimed(self, claim: Hashable) -> bool:
        """Whether an admitted peer holds this claim (e.g. a VTEP MAC)."""
        with self._lock:
            return claim in self._holder

    def snapshot(self) -> list[Lease]:
        with self._lock:
            return list(self._peers.values())

    def rejected(self) -> dict[LeaseKey, tuple[Lease, Skip]]:
        with self._lock:
            return dict(self._rejected)

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)


def _age(lease: Lease) -> tuple[int, tuple[int, int]]:
    # mod_revision 0 means unknown (in-memory registries): keep batch order stable.
    return (lease.mod_revision or 0, lease.key.order)


def _claim_text(claim: Hashable) -> str:
    if isinstance(claim, tuple) and len(claim) == 2:
        return f"{claim[0]} {claim[1]}"
    return str(claim)


def skipped_report(
    table: PeerTable, bad_leases: Iterable[Any], reconciler_skipped: Mapping[LeaseKey, Skip]
) -> dict[str, tuple[str, str]]:
    """Every peer lease not programmed: {lease key: (kind, reason)}; rejected at admission,
    undecodable (bad values: never peers) or skipped by the backend."""
    out = {str(k): (skip.kind, skip.reason) for k, (_, skip) in table.rejected().items()}
    for bad in bad_leases:
        out[str(bad.lease_key or bad.key)] = ("undecodable", bad.reason)
    for key, skip in reconciler_skipped.items():
        out[str(key)] = (skip.kind, skip.reason)
    return out


def deleted_entry_wanted(
    table: PeerTable,
    subnet_len: int | None,
    dst: Deleted,
    ipv6_subnet_len: int | None = None,
) -> bool:
    """Whether a deleted route/neighbour/FDB entry belongs to a peer we still program.

    Our own deletions (a lease removed, a MAC changed) come back as kernel
    notifications too; by then the peer table no longer holds that peer (or
    MAC), so they need no full pass.  A deletion of a current peer's entry, or
    one the message does not identify (None), still triggers one.  Both
    families alike: a route's destination is either half of a peer's key, a
    VXLAN neighbour is its subnet's first address (IPv4 `S.0`, IPv6 `S::`).
    """
    if dst is None:
        return True
    if isinstance(dst, (IPv4Network, IPv6Network)):  # either half of a peer's key
        return table.holds_subnet(dst)
    if isinstance(dst, (IPv4Address, IPv6Address)):
        length = subnet_len if dst.version == 4 else ipv6_subnet_len
        if not length:
            return True
        subnet = ip_network((dst, length), strict=False)
        # A VXLAN peer's neighbour is its subnet's first address; others are not ours.
        return subnet.network_address != dst or table.holds_subnet(subnet)
    # An FDB entry: the vxlan backend's claim (its IPv4 or its IPv6 device's MAC).
    return table.claimed(("vtep-mac", dst)) or table.claimed(("vtep-mac-v6", dst))
