"""The daemon's nftables table as an Owner of its reconciler (flannelish.daemon.reconciler).

:class:`NftOwner` re-asserts the table that flannelish.node.firewall.NftRules
describes and diffs the ``vxlan_peers`` set element by element like any
kernel object (:class:`PeerSetResource`), batching a pass's element changes
into one nft transaction; a lease event adds or deletes just its peer's
element (the reconciler counts peers per element, so an address two peers
share stays while one of them does).  It also decides when the anti-spoof drop rule is
armed: only after a pass has written the full peer set, so arming never drops
a peer's traffic.  With an IPv6 network the peers' PublicIPv6 are elements too
(of ``table ip6 flannelish``'s set): a peer is planned as one element per
family it has an underlay address of, and both tables arm together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

from flannelish.errors import KernelError
from flannelish.node.firewall import (
    FAMILY,
    FAMILY6,
    NftRules,
    PeerIP,
)
from flannelish.subnet.lease import Lease

log = logging.getLogger("flannelish.nft")


@dataclass(frozen=True, slots=True)
class PeerAddr:
    """One element of ``vxlan_peers``: a peer's PublicIP or PublicIPv6 (a reconciler record)."""

    ip: PeerIP


@dataclass
class _PassBatch:
    """What one reconcile pass wants and found, so element changes go out in one transaction.

    The reconcile thread fills it; the daemon's on_pass hook may read it from
    another thread (NftOwner.after_pass), hence the lock.
    """

    planned: set[PeerIP] = field(default_factory=set)
    actual: set[PeerIP] = field(default_factory=set)
    done: set[PeerIP] = field(default_factory=set)
    dumped: bool = False  # the reconciler got as far as listing the set
    failed: bool = False  # a write failed, so the set may not match the plan
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reset(self) -> None:
        with self.lock:
            self.planned.clear()
            self.actual.clear()
            self.done.clear()
            self.dumped = self.failed = False

    def complete(self) -> bool:
        """True once every planned peer is known to be in the kernel set."""
        with self.lock:
            return self.dumped and not self.failed and self.planned <= (self.actual | self.done)


class PeerSetResource:
    """The elements of ``vxlan_peers`` as a reconciler Resource (diffed like routes).

    The reconciler calls ensure()/remove() once per element; with 1000 peers
    that would be 1000 `nft` processes.  Within a pass (``batch`` reset by
    NftOwner.resources() and filled by plan()/dump()), the first call writes
    every missing (or stale) element in one transaction and later calls for
    elements already written return at once.

    ``single=True`` (the per-event path, NftOwner.event_resources): each call
    writes its one element and records it in the batch as planned and present
    (or neither), so a pass running meanwhile neither deletes an element an
    event added nor re-adds one an event deleted.
    """

    kind: ClassVar[str] = "nft-peer"
    record: ClassVar[type] = PeerAddr

    def __init__(
        self,
        rules: NftRules,
        batch: _PassBatch | None = None,
        restore: Callable[[], None] | None = None,
        single: bool = False,
    ) -> None:
        self._rules = rules
        self.batch = batch
        self._restore = restore  # called when the table is gone, before listing
        self._single = single

    def _listing(self) -> set[PeerIP] | None:
        peers = self._rules.peer_elements()
        if peers is None and self._restore is not None:
            self._restore()
            peers = self._rules.peer_elements()
        return peers

    def key(self, obj: PeerAddr) -> Hashable:
        return obj.ip

    def dump(self, tick: Callable[[], object] | None = None) -> Sequence[PeerAddr]:
        peers = self._listing() or set()
        if self.batch is not None:
            with self.batch.lock:
                # Kept until the next pass: hold the leases' own address objects,
                # not the listing's copies (the pass's garbage must not pin memory).
                planned = self.batch.planned
                self.batch.actual = {ip for ip in planned if ip in peers} | (peers - planned)
                self.batch.dumped = True
        return [PeerAddr(ip) for ip in sorted(peers, key=lambda a: (a.version, int(a)))]

    def _write(self, verb: str, obj: PeerAddr) -> None:
        b = self.batch
        if self._single:
            self._write_one(verb, obj.ip)
            return
        if b is None:
            ips = {obj.ip}
        else:
            with b.lock:
                if obj.ip in b.done:
                    return
                pending = b.planned - b.actual if verb == "add" else b.actual - b.planned
                ips = {obj.ip} | (pending - b.done)
        try:
            self._rules.change_elements(verb, ips)
        except KernelError:
            if b is not None:
                with b.lock:
                    b.failed = True
            raise
        if b is not None:
            with b.lock:
                b.done |= ips

    def _write_one(self, verb: str, ip: PeerIP) -> None:
        b = self.batch
        try:
            # The element goes to its family's set (table ip or ip6 flannelish).
            self._rules.change_elements(verb, [ip])
        except KernelError:
            if b is not None:
                with b.lock:
                    b.failed = True  # the set may now differ from what a pass planned
            raise
        if b is not None:
            with b.lock:
                if verb == "add":
                    b.planned.add(ip)
                    b.actual.add(ip)
                else:
                    b.planned.discard(ip)
                    b.actual.discard(ip)

    def ensure(self, obj: PeerAddr) -> None:
        self._write("add", obj)

    create = ensure

    def remove(self, obj: PeerAddr) -> None:
        self._write("delete", obj)


class NftOwner:
    """NftRules as an Owner of the daemon's Reconciler (flannelish.daemon.reconciler).

    * ``ensure_base()`` (periodic passes) re-asserts the table: a deleted
      table, chain or edited rule is restored; counted in ``repairs``.  A
      table found missing while listing the set (any pass) is restored too.
    * ``plan(peer)`` / ``resources()`` make the reconciler diff the peer set
      like kernel routes; ``resources()`` marks the start of a pass (it is
      called once per pass, also when ``ensure_base`` is skipped).
    * ``arm()``: call once the first lease snapshot is in the PeerTable.  The
      drop rule is added after the first pass that completed with the set
      written in full (``after_pass()``, or the start of the next pass), so
      arming never drops a peer's traffic.
    """

    def __init__(self, rules: NftRules) -> None:
        self.rules = rules
        self.repairs = 0
        self._created = False
        self._arm_requested = False
        self._pass_since_request = False  # a pass started after arm() was called
        self._arm_lock = threading.Lock()
        self._batch = _PassBatch()
        self._resources = self._make_resources(rules)
        self._event_resources = self._make_resources(rules, single=True)

    def _make_resources(self, rules: NftRules, single: bool = False) -> list[PeerSetResource]:
        if rules.vxlan_port is None:
            return []
        restore = None if single else self._restore  # events never list the table
        return [PeerSetResource(rules, self._batch, restore=restore, single=single)]

    def replace_rules(self, rules: NftRules) -> None:
        """Adopt new desired rules (e.g. the lease moved); the next pass applies them."""
        if self.rules.armed:
            rules.arm()
        self.rules = rules
        self._resources = self._make_resources(rules)
        self._event_resources = self._make_resources(rules, single=True)
        self.rules.apply()

    def arm(self) -> None:
        if not self.rules.armed and not self._arm_requested:
            self._arm_requested = True
            self._pass_since_request = False

    def _seed(self) -> frozenset[PeerIP]:
        """The peers the current (or, before resources(), the last) pass wants.

        Written with a restored table in one transaction: a table deleted
        behind our back comes back with its drop rule *and* the peers, so no
        legitimate peer's VXLAN packet is dropped in between.
        """
        with self._batch.lock:
            return frozenset(self._batch.planned)

    def _restore(self) -> None:
        self.rules.apply(self._seed())
        if self._created:
            self.repairs += 1
        self._created = True

    def _adopt_or_create(self) -> None:
        """Start-up: keep a table an earlier run left armed, else create it unarmed.

        A restart must not open a window without the anti-spoof filter: if the
        kernel already has our armed table, it is adopted armed, its peer set
        kept (the first pass then adds and removes only the difference).
        """
        state = self.rules.state()
        if (
            state is not None
            and state.has_set
            and self.rules.vxlan_port is not None
            and state.chains == self.rules.armed_chains()
        ):
            self.rules.arm()
            self._arm_requested = False
            self.rules.apply(state.peers)
            log.info("adopted the armed nftables table", extra={"peers": len(state.peers)})
            return
        self.rules.apply()

    def _maybe_arm(self) -> None:
        with self._arm_lock:  # the reconcile thread and the on_pass hook may race here
            if self._arm_requested and self._pass_since_request and self._batch.complete():
                self._arm_requested = False
                self.rules.arm()
                self.rules.apply()  # a planned change, not a repair

    def after_pass(self) -> None:
        """End of a reconcile pass (from the daemon's on_pass hook): arm if due."""
        self._maybe_arm()

    def ensure_base(self) -> bool:
        if not self._created:  # start-up: creating (or adopting) is not repairing
            self._adopt_or_create()
            self._created = True
        elif self.rules.ensure(self._seed()):
            self.repairs += 1
        return False  # nothing per peer needs replaying beyond the set diff

    def resources(self) -> Sequence[PeerSetResource]:
        self._maybe_arm()  # the previous pass may have completed the set
        self._batch.reset()
        self._pass_since_request = self._arm_requested
        return self._resources

    def event_resources(self) -> Sequence[PeerSetResource]:
        """The resources of the per-event path: one element per write, no pass started."""
        return self._event_resources

    def plan(self, peer: Lease) -> Sequence[PeerAddr]:
        if not self._resources:
            return ()
        ips: list[PeerIP] = []
        families = self.rules.families
        # Lease attributes hold address objects already (a copy costs a parse per peer).
        v4, v6 = peer.attrs.public_ip, getattr(peer.attrs, "public_ipv6", None)
        if FAMILY in families and v4:
            v4 = v4 if isinstance(v4, IPv4Address) else IPv4Address(v4)
            if not v4.is_unspecified:  # an IPv6-only peer advertises 0.0.0.0
                ips.append(v4)
        if FAMILY6 in families and v6:
            ips.append(v6 if isinstance(v6, IPv6Address) else IPv6Address(v6))
        with self._batch.lock:
            self._batch.planned.update(ips)
        return tuple(PeerAddr(ip) for ip in ips)
