"""The set of peer leases the node currently knows, fed by lease watch events.

Thread-safe: the watch thread applies events, the reconciler takes
snapshots.  Our own subnet is always left out (a peer route to ourselves
would black-hole local pods).  A REMOVED event simply drops the peer: the
reconciler deletes whatever the kernel still holds for it, so the event's
previous attributes are not needed for cleanup.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from ipaddress import IPv4Network

from flannelish.subnet.lease import Event, EventType, Lease


class PeerTable:
    def __init__(self, own_subnet: IPv4Network | None = None) -> None:
        self._lock = threading.Lock()
        self._peers: dict[IPv4Network, Lease] = {}
        self.own_subnet = own_subnet
        # Set once the watch's first batch (the snapshot) is in.  Before that an
        # empty table means "not known yet", not "no peers": reconciling then
        # would delete every peer's entries on a daemon restart.
        self.synced = threading.Event()

    def apply(self, events: Iterable[Event]) -> bool:
        """Apply a batch; True if the peer set changed."""
        changed = False
        with self._lock:
            for event in events:
                subnet = event.lease.subnet
                if subnet == self.own_subnet:
                    continue
                if event.type is EventType.REMOVED:
                    changed |= self._peers.pop(subnet, None) is not None
                elif self._peers.get(subnet) != event.lease:
                    self._peers[subnet] = event.lease
                    changed = True
        if not self.synced.is_set():
            self.synced.set()
            changed = True
        return changed

    def set_own_subnet(self, subnet: IPv4Network) -> None:
        with self._lock:
            self.own_subnet = subnet
            self._peers.pop(subnet, None)

    def snapshot(self) -> list[Lease]:
        with self._lock:
            return list(self._peers.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)
