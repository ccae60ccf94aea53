"""Kernel change notifications that re-run reconcile loops.

* rtnetlink: our device deleted or changed, a route or nexthop object with
  our protocol, a neighbour or address on our device deleted -> a full pass of the backend's
  loop with the device check (repairs within milliseconds, not at the next
  resync);
* nfnetlink: a deletion in our nftables table -> a full pass of the extra
  owners' loops (the table and its peer set come back in one transaction);
  not for a deleted anti-spoof set element no programmed peer holds: that is
  our own per-event delete (a lease gone, a PublicIP changed).

A monitor that cannot be opened is logged; the periodic resync still repairs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence

from flannelish.backends.base import Backend
from flannelish.daemon.loop import ReconcileLoop
from flannelish.kernel.monitor import NFT_MSG_DELSETELEM, Change, ChangeMonitor, Deleted
from flannelish.kernel.netlink import ROUTE_PROTO
from flannelish.kernel.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELNEXTHOP,
    RTM_DELROUTE,
    RTM_NEWLINK,
)

log = logging.getLogger("flannelish.daemon")


def start_monitors(
    backend_loop: ReconcileLoop,
    extra_loops: Sequence[ReconcileLoop],
    backend: Backend | None,
    still_wanted: Callable[[Deleted], bool] = lambda _dst: True,
) -> list[ChangeMonitor]:
    """Start the monitors; returns them (the caller stops them on shutdown).

    ``still_wanted(change.dst)``: whether a deleted route/neighbour/FDB entry (its
    destination, neighbour IP or MAC; None if unknown) belonged to a peer we
    still program.  Our own deletions (a lease removed, a MAC changed) come
    back as notifications too and need no full pass.
    """

    def indexes() -> set[int | None]:
        return getattr(backend, "device_indexes", None) or {getattr(backend, "index", None)}

    def on_device(change: Change) -> bool:
        return change.ifindex in indexes()

    # What each accepted notification type must show to cost a full pass.  The
    # socket filter hands over only these types: each neighbour, FDB entry and
    # route the daemon writes is announced too, and waking to read those cost the
    # next write its CPU.
    checks: dict[int, Callable[[Change], bool]] = {
        RTM_DELROUTE: lambda c: c.proto == ROUTE_PROTO and still_wanted(c.dst),
        # A peer's nexthop (dst: its subnet's address, as for a VXLAN neighbour).
        RTM_DELNEXTHOP: lambda c: c.proto == ROUTE_PROTO and still_wanted(c.dst),
        RTM_DELNEIGH: lambda c: on_device(c) and still_wanted(c.dst),
        RTM_DELLINK: on_device,
        RTM_NEWLINK: on_device,
        RTM_DELADDR: on_device,
    }

    def relevant(change: Change) -> bool:
        if change.type == 0:
            return True  # socket overrun: resync to be safe
        check = checks.get(change.type)
        return check is not None and check(change)

    def repair(changes: list[Change]) -> None:
        # Debug level: says which notification cost a full pass (tests count these).
        log.debug("kernel change: full pass", extra={"changes": [_describe(c) for c in changes]})
        backend_loop.trigger(check_base=True)

    started: list[ChangeMonitor] = []
    try:
        monitor = ChangeMonitor(repair, relevant, only_types=frozenset(checks))
    except OSError as exc:
        log.warning("kernel change notifications unavailable (%s); periodic resync only", exc)
        return started
    monitor.start()
    started.append(monitor)
    if extra_loops:
        nft = _nft_monitor(extra_loops)
        if nft is not None:
            started.append(nft)
    return started


def _describe(change: Change) -> str:
    return f"{change.type}:{change.ifindex}:{change.dst}"


def nft_relevant(loops: Sequence[ReconcileLoop]) -> Callable[[Change], bool]:
    """Which nftables deletions need a pass of these loops: any in our table, except
    a deleted anti-spoof element no programmed peer holds (our own per-event delete)."""
    from flannelish.node.firewall import PEER_SET, TABLE
    from flannelish.node.firewall_owner import PeerSetResource

    def wanted(ip: object) -> bool:
        # The reconciler lets go of an element (refcount 0) before deleting it.
        return any(loop.reconciler.holds(PeerSetResource.kind, ip) for loop in loops)

    def ours(change: Change) -> bool:
        # NFPROTO_IPV4 / NFPROTO_IPV6 equal AF_INET / AF_INET6: table ip and ip6 flannelish.
        if change.family not in (socket.AF_INET, socket.AF_INET6) or change.table != TABLE:
            return False
        if change.type & 0xFF == NFT_MSG_DELSETELEM and change.set_name == PEER_SET:
            return change.dst is None or wanted(change.dst)
        return True

    return ours


def _nft_monitor(loops: Sequence[ReconcileLoop]) -> ChangeMonitor | None:
    ours = nft_relevant(loops)

    def trigger(_changes: list[Change]) -> None:
        for loop in loops:
            loop.trigger(check_base=True)

    try:
        monitor = ChangeMonitor(trigger, ours, nftables=True)
    except OSError as exc:
        log.warning("nftables notifications unavailable (%s); periodic resync only", exc)
        return None
    monitor.start()
    return monitor
