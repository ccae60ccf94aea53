"""The reconcile loop: one thread per owner running per-event applies and full passes.

See :class:`ReconcileLoop`; the work itself is :class:`flannelish.daemon.reconciler.Reconciler`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from flannelish.daemon.reconciler import PassResult, Reconciler
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Lease

log = logging.getLogger("flannelish.reconciler")

RETRY_SECONDS = 1.0  # after a pass or apply with errors
# The periodic pass is a safety net (the kernel monitor triggers a pass at once
# when one of our objects goes): it may take at most 1/SAFETY_NET_SHARE of the
# time, so with thousands of peers it runs less often than ``interval``.
SAFETY_NET_SHARE = 20


class ReconcileLoop:
    """Runs the reconciler in its own thread: per-event applies, and full passes.

    * :meth:`notify` (lease events): the named peers are applied on their
      own (``lookup`` gives each one's current lease, None once removed).
      Without ``lookup`` every notification is a full pass.
    * :meth:`trigger` (kernel notifications, start-up, config changes): a full
      pass; triggers that arrive during one are coalesced into one more.
    * a full pass every ``interval`` seconds regardless (the periodic resync),
      or every SAFETY_NET_SHARE times its own duration where that is longer
      (a 5000-peer pass of ~1.7 s every 10 s was 17 % of a CPU while idle),
      and 1 s after a pass or apply with errors.
    """

    def __init__(
        self,
        reconciler: Reconciler,
        peers: Callable[[], Sequence[Lease]],
        interval: float,
        on_pass: Callable[[PassResult], None] | None = None,
        ready: Callable[[], bool] = lambda: True,
        name: str = "reconciler",
        lookup: Callable[[LeaseKey], Lease | None] | None = None,
        inline: bool = False,
    ) -> None:
        self.reconciler = reconciler
        self._peers = peers
        self._lookup = lookup
        self._ready = ready
        self.interval = interval
        self._on_pass = on_pass
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Held while this loop's thread works; notify() with ``inline`` applies in
        # the caller's thread when it can take it (an idle loop): one thread
        # hand-off less between the lease watch and the kernel.
        self._busy = threading.Lock()
        self._inline = inline
        self._pending: set[LeaseKey] = set()
        self._base_due = True
        self._full_due = False
        self._followup = False  # an apply left work for a full pass (1 s later)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.passes = 0
        self.applies = 0
        self.last: PassResult | None = None
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def trigger(self, check_base: bool = False) -> None:
        """Request a full pass; ``check_base`` also re-checks the device (kernel link events)."""
        if check_base:
            self._base_due = True
        self._full_due = True
        self._wake.set()

    def notify(self, subnets: Iterable[LeaseKey]) -> None:
        """These peers changed: apply them (without a pass over the others)."""
        if self._lookup is None:
            self.trigger()
            return
        with self._lock:
            self._pending.update(subnets)
        # Not before the first pass (it learns which kernel entries are ours) and
        # never during one (its between() applies the pending peers).
        if self._inline and self.passes and self._busy.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._busy.release()
            if not self._followup:
                return
        self._wake.set()

    def run_once(self, check_base: bool = True) -> PassResult:
        with self._lock:
            self._pending.clear()  # the pass plans from the current peers, these included
        result = self.reconciler.reconcile(self._peers(), check_base, between=self._drain)
        self.passes += 1
        self._finish(result)
        return result

    def _drain(self) -> PassResult | None:
        """Apply the peers notified so far (also called from inside a full pass)."""
        if self._lookup is None:
            return None
        with self._lock:
            subnets, self._pending = self._pending, set()
        if not subnets:
            return None
        result = self.reconciler.apply_peers(subnets, self._lookup)
        self.applies += 1
        if result.needs_full or result.errors:
            self._followup = True
        self._finish(result)
        return result

    def _finish(self, result: PassResult) -> None:
        self.last = result
        if result.changes or result.errors:
            # Per event at debug level: the reconciler already logged each entry it
            # set or deleted, and a log line costs ~0.2 ms of the event's path.
            log.log(
                logging.INFO if result.full or result.errors else logging.DEBUG,
                "reconciled" if result.full else "applied lease events",
                extra={
                    "changes": result.changes,
                    "errors": result.errors,
                    "rebuilt": result.rebuilt,
                    "ms": round(result.seconds * 1000, 1),
                },
            )
        if self._on_pass is not None:
            self._on_pass(result)

    def _run(self) -> None:
        next_full = time.monotonic() + self.interval  # the first pass comes from trigger()
        try:
            while not self._stop.is_set():
                if not self._wake.wait(max(0.0, next_full - time.monotonic())):
                    self._base_due = True  # periodic resync or retry: check everything
                if self._stop.is_set():
                    return
                self._wake.clear()
                if not self._ready():  # no pass before the peer set is known
                    continue
                with self._busy:
                    if self._full_due or time.monotonic() >= next_full:
                        self._full_due = self._followup = False
                        check_base, self._base_due = self._base_due, False
                        result = self.run_once(check_base)
                        # A failed step is retried soon, not only at the next resync.
                        if result.errors or self._followup:
                            delay = min(RETRY_SECONDS, self.interval)
                        else:
                            delay = max(self.interval, SAFETY_NET_SHARE * result.seconds)
                        next_full = time.monotonic() + delay
                    else:
                        self._drain()
                if self._followup:
                    next_full = min(next_full, time.monotonic() + RETRY_SECONDS)
        except BaseException as exc:  # reported by the node, which exits non-zero
            self.failure = exc
            log.exception("reconciler stopped")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
