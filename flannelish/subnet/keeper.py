"""LeaseKeeper: keep our lease alive, and get it back when it is lost.

A thread that watches our own key and renews it at ``expiration - margin``
(the margin is capped at half the TTL so short test TTLs still work),
retrying every ``retry_interval_s`` (1 min, as flanneld) when etcd fails.

When the key disappears (revoked, deleted by an operator, expired during an
outage) or another node's address appears in it, the lease is lost.  Flannel
then exits 0 (upstream #904, #1240; docs/flannel-compat.md §5); we log it
loudly and re-acquire, preferring the same subnet.  If no subnet can be had
(pool full, config gone) the keeper reports LeaseLostError through
``on_fatal`` and ends.  A reservation has no expiry and is never renewed,
but its loss is handled the same way.

When etcd is recreated without its data, the own-key watch notices the
revision going backwards and re-lists (flannelish.subnet.watch): the key is
missing, so the lease is re-acquired like any lost one.  As a second line
(a new cluster whose revision already caught up looks like the old one),
``check_interval_s`` makes the keeper GET its own key that often.  The
re-acquisition first waits for the network config (an empty etcd has none
until the operator puts it back), logging the key it expects; it never gives
up while waiting, and nothing is torn down meanwhile.

``on_change(lease)`` is called with every new version of the lease (renewal
or re-acquisition); compare ``.subnet`` to notice a move.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flannelish.errors import (
    ConfigError,
    EtcdAuthError,
    EtcdError,
    FlannelishError,
    LeaseLostError,
    OutOfSubnetsError,
)
from flannelish.subnet.lease import Lease
from flannelish.subnet.watch import Snapshot, lease_changes

if TYPE_CHECKING:
    from flannelish.subnet.manager import SubnetManager

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    def __init__(
        self,
        manager: SubnetManager,
        lease: Lease,
        renew_margin_s: float,
        on_change: Callable[[Lease], None],
        on_fatal: Callable[[BaseException], None] | None = None,
        retry_interval_s: float = 60.0,
        check_interval_s: float | None = None,
    ):
        super().__init__(name="lease-keeper", daemon=True)
        self.manager = manager
        self.lease = lease
        self.renew_margin_s = renew_margin_s
        self.on_change = on_change
        self.on_fatal = on_fatal
        self.retry_interval_s = retry_interval_s
        self.check_interval_s = check_interval_s
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._next_renew = self._renew_time(lease)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                self._keep(self.lease)
        except BaseException as exc:
            self.error = exc
            log.error("lease keeper gave up: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    # -- one subnet ------------------------------------------------------------

    def _keep(self, lease: Lease) -> None:
        """Watch and renew `lease` until it is lost (then re-acquire) or we are stopped."""
        ours = _who(lease)
        changes = lease_changes(
            self.manager.registry, self._stop_event, lease.key, label="own-lease watch"
        )
        interval = self.check_interval_s
        next_check = time.monotonic() + interval if interval else float("inf")
        for item in changes:
            if isinstance(item, Snapshot):
                here = item.leases[0] if item.leases else None
                lost = here is None or _who(here) != ours
                if lost and item.reset:
                    log.error(
                        "LEASE LOST: etcd was recreated without its data; our key for %s is gone",
                        lease.key,
                    )
            else:
                lost = any(c.lease is None or _who(c.lease) != ours for c in item)
                if not lost and interval and time.monotonic() >= next_check:
                    next_check = time.monotonic() + interval
                    lost = self._key_missing(lease)
            if not lost and time.time() >= self._next_renew:
                lost = not self._renew()
            if lost:
                self._recover(self.lease)
                return  # watch the (possibly new) subnet from a fresh snapshot

    def _key_missing(self, lease: Lease) -> bool:
        """The periodic check: True if our key is gone or holds another node's address."""
        try:
            current = self.manager.registry.get_lease(lease.key)
        except EtcdAuthError:
            raise
        except EtcdError as exc:
            log.debug("own-lease check failed: %s", exc)
            return False
        if current is not None and _who(current) == _who(lease):
            return False
        log.error(
            "own-lease check: the key for %s is %s in etcd",
            lease.key,
            "missing" if current is None else f"held by {current.attrs.public_ip}",
        )
        return True

    def _renew(self) -> bool:
        """True if renewed or retry scheduled; False if the lease turned out lost."""
        base = self.manager.own_lease(self.lease.key) or self.lease
        try:
            new = self.manager.renew(base)
        except LeaseLostError as exc:
            log.error("renewal found the lease lost: %s", exc)
            return False
        except EtcdAuthError:
            raise
        except EtcdError as exc:
            self._next_renew = time.time() + self.retry_interval_s
            log.warning(
                "lease renewal failed; retrying in %.0fs: %s",
                self.retry_interval_s,
                exc,
                extra={"subnet": str(self.lease.key)},
            )
            return True
        log.info("renewed lease", extra={"subnet": str(new.key), "lease_id": f"{new.lease_id:x}"})
        self._adopt(new)
        return True

    def _recover(self, lost: Lease) -> None:
        log.error(
            "LEASE LOST: subnet %s is no longer ours in etcd (revoked, deleted or expired); "
            "re-acquiring, preferring the same subnet",
            lost.key,
        )
        # The daemon may have advertised new attributes (a new VTEP MAC) since.
        attrs = (self.manager.own_lease(lost.key) or lost).attrs
        self.manager.forget(lost.key)
        delay = 1.0
        while not self._stop_event.is_set():
            try:
                # An empty (recreated) etcd has no config: wait for the operator to put it
                # back, logging the key, keeping the data path as it is.
                if self.manager.get_network_config(wait=True, stop=self._stop_event) is None:
                    return  # stopped while waiting
                new = self.manager.acquire(attrs, previous_subnet=lost.key)
                break
            except (OutOfSubnetsError, ConfigError, EtcdAuthError) as exc:
                raise LeaseLostError(
                    f"the lease for {lost.key} was lost and no subnet could be re-acquired",
                    str(exc),
                ) from exc
            except FlannelishError as exc:
                log.warning("re-acquisition failed; retrying in %.0fs: %s", delay, exc)
                self._stop_event.wait(delay)
                delay = min(delay * 2, self.retry_interval_s)
        else:
            return
        if new.key == lost.key:
            log.warning("re-acquired the same subnet %s after losing it", new.key)
        else:
            log.error(
                "re-acquired a DIFFERENT subnet %s (was %s): pods on the old subnet lose "
                "connectivity until they are recreated",
                new.key,
                lost.key,
            )
        self._adopt(new)

    def _adopt(self, lease: Lease) -> None:
        self.lease = lease
        self._next_renew = self._renew_time(lease)
        self.on_change(lease)

    def _renew_time(self, lease: Lease) -> float:
        if lease.expiration is None:
            return float("inf")  # a reservation never expires
        margin = min(self.renew_margin_s, self.manager.lease_ttl / 2)
        return lease.expiration - margin


def _who(lease: Lease) -> tuple[object, ...]:
    """The addresses a lease advertises: a key holding others is no longer ours."""
    return (lease.attrs.public_ip, lease.attrs.public_ipv6)
