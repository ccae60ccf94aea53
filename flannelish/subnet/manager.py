"""SubnetManager: read the network config, acquire, renew, list and watch leases.

Acquisition follows Flannel's order (docs/flannel-compat.md §4) with its bugs fixed:

1. reuse the lease whose PublicIP is ours (a reservation stays lease-less);
2. else the previous subnet from subnet.env, if it is in the pool and
   overlaps no live lease (Flannel checks only an exact match);
3. else a random free subnet among the first 100 free ones of the pool;
4. the key is written create-only; a lost race re-runs the whole decision
   (Flannel gives up on the first lost race), choosing among twice as many
   free subnets as the round before: k nodes booting at once all want the
   same first 100, and only a choice among about k spreads them out (5000
   nodes in lockstep: 6 rounds instead of 50); a dual-stack key that shares
   a half with a key written just before it is a lost race too (§4);
5. with ``wait``, an etcd that fails or times out (overloaded by a cluster
   booting at once) is retried with backoff until ``stop``: a node waits for
   etcd rather than exit.

Renewal rewrites the key only if nobody else wrote it since we did (compare on
mod revision), grants a fresh etcd lease and revokes the old one, so each node
holds exactly one etcd lease.  A reservation is never given an etcd lease
(Flannel bug #1329, docs/flannel-compat.md §3).

The manager remembers the last version of each lease it wrote, so a renewal by
the LeaseKeeper and an attribute change by the daemon do not mistake each
other's writes for a foreign one.

Slightly over the usual ~450 lines: acquisition, renewal and listing share
the remembered versions above, so they stay in one class.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network, IPv6Network
from typing import TypeVar

from flannelish.errors import (
    ConfigError,
    DuplicateNodeError,
    EtcdAuthError,
    EtcdError,
    LeaseLostError,
    OutOfSubnetsError,
)
from flannelish.subnet.config import NetworkConfig, parse_network_config
from flannelish.subnet.keys import Keys, LeaseKey, as_key, overlap
from flannelish.subnet.lease import Event, Lease, LeaseAttrs
from flannelish.subnet.registry import Registry
from flannelish.subnet.watch import RESET_GRACE_S, Exclude, Snapshot, watch_events

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_LEASE_TTL", "SubnetManager"]

Net = TypeVar("Net", IPv4Network, IPv6Network)

DEFAULT_LEASE_TTL = 24 * 3600  # Flannel's fixed TTL
MAX_CANDIDATES = 100  # Flannel picks at random among the first 100 free subnets
MAX_ATTEMPTS = 30  # lost races before giving up (each lost race means progress elsewhere)
MAX_WIDENING = 10  # candidates double per lost race, up to 100 << 10 (102400)
ETCD_RETRY_MAX_S = 5.0  # backoff cap while etcd fails during acquisition (wait=True)
CONFIG_POLL_S = 1.0
# The listing acquire() read seeds the lease watch if the watch starts within this
# long: at 5000 leases a second listing costs ~0.4 s of a cold start.  Older, the
# watch lists again (replaying a long stretch of history would cost more).
LISTING_REUSE_S = 30.0


class SubnetManager:
    def __init__(
        self,
        registry: Registry,
        lease_ttl: int = DEFAULT_LEASE_TTL,
        rng: random.Random | None = None,
    ):
        if lease_ttl < 1:
            raise ConfigError("lease TTL must be at least 1 second", f"got {lease_ttl}")
        self.registry = registry
        self.lease_ttl = lease_ttl
        self._rng = rng or random.Random()
        self._own: dict[LeaseKey, Lease] = {}
        self._own_lock = threading.Lock()
        self.lost_races = 0  # acquisition rounds lost to another node (a figure for benchmarks)
        self._listing: tuple[float, Snapshot] | None = None  # acquire()'s last listing

    # -- config ------------------------------------------------------------------

    def get_network_config(
        self, wait: bool = True, stop: threading.Event | None = None
    ) -> NetworkConfig | None:
        """The parsed config; with `wait`, retry every second while it is missing or etcd
        is unreachable.  Returns None only if `stop` is set while waiting.  An invalid
        config or refused credentials raise at once: waiting would not fix them."""
        key = Keys(self.registry.key_prefix).config
        stop = stop or threading.Event()
        attempt = 0
        while True:
            try:
                raw = self.registry.get_config()
                if raw is not None:
                    try:
                        return parse_network_config(raw)
                    except ConfigError as exc:
                        raise ConfigError(f"invalid network config at {key}", str(exc)) from None
                problem: FlannelishErrorLike = ConfigError(
                    f"network config not found in etcd at key {key}",
                    "write it with `flannelish config put FILE` (or etcdctl put)",
                )
            except EtcdAuthError:
                raise
            except EtcdError as exc:
                problem = exc
            if not wait:
                raise problem
            if attempt % 30 == 0:  # one line at once, then every 30 s
                log.warning("waiting for the network config: %s", problem)
            attempt += 1
            if stop.wait(CONFIG_POLL_S):
                return None

    def _config_now(self) -> NetworkConfig:
        config = self.get_network_config(wait=False)
        assert config is not None
        return config

    # -- acquire -----------------------------------------------------------------

    def acquire(
        self,
        attrs: LeaseAttrs,
        previous_subnet: IPv4Network | LeaseKey | None = None,
        wait: bool = False,
        stop: threading.Event | None = None,
        keep_listing: bool = False,
    ) -> Lease:
        """Take a subnet (one per enabled family) for a node advertising `attrs`
        (see the module docstring).  `previous_subnet`: the one(s) of an earlier run.
        `wait`: retry etcd failures (not refused credentials) until `stop` is set.
        `keep_listing`: the next watch_leases() starts from the listing read here."""
        previous = as_key(previous_subnet) if previous_subnet is not None else LeaseKey(None)
        stop = stop or threading.Event()
        lost = failures = 0
        while True:
            if lost:
                time.sleep(self._rng.uniform(0.005, 0.05) * min(lost, 5))
            try:
                lease = self._acquire_round(
                    attrs, previous, lost, first=not (lost or failures), keep=keep_listing
                )
            except EtcdAuthError:
                raise
            except EtcdError as exc:
                if not wait or stop.is_set():
                    raise
                failures += 1
                if failures % 30 == 1:  # one line at once, then every 30 failures
                    log.warning("could not acquire a subnet, etcd failed; retrying: %s", exc)
                if stop.wait(min(0.5 * 2 ** min(failures - 1, 4), ETCD_RETRY_MAX_S)):
                    raise
                continue
            if lease is not None:
                self._remember(lease)
                return lease
            lost += 1
            self.lost_races += 1
            if lost >= MAX_ATTEMPTS:
                raise EtcdError(
                    f"could not acquire a subnet after {MAX_ATTEMPTS} attempts",
                    "other nodes kept taking the chosen subnets first",
                )
            log.info("lost a race for a subnet; retrying", extra={"attempt": lost})

    def _acquire_round(
        self, attrs: LeaseAttrs, previous: LeaseKey, lost: int, first: bool, keep: bool = False
    ) -> Lease | None:
        """List, decide, write once; None if another node took the chosen subnet first."""
        config = self._config_now()
        _check_attrs(config, attrs)
        listing = self.registry.list_all()
        if keep:
            self._listing = (time.monotonic(), Snapshot(listing.leases, listing.revision))
        # A key with a bad value still exists: a create there would fail every time.
        taken = [k for b in listing.bad if (k := b.lease_key) is not None]
        if taken and first:
            log.warning(
                "%d subnet key(s) hold bad lease values; treating those subnets as taken",
                len(taken),
                extra={"subnets": ",".join(str(x) for x in taken[:20])},
            )
        limit = MAX_CANDIDATES << min(lost, MAX_WIDENING)
        return self._try_acquire(
            config, listing.leases, attrs, previous, taken, limit, listing.revision
        )

    def _try_acquire(
        self,
        config: NetworkConfig,
        leases: list[Lease],
        attrs: LeaseAttrs,
        previous: LeaseKey,
        taken: list[LeaseKey] | None = None,
        limit: int = MAX_CANDIDATES,
        listed_at: int = 0,
    ) -> Lease | None:
        """One decision round; None means a race was lost and the caller re-lists.

        `taken`: keys that exist but hold no usable lease (bad values); `limit`:
        choose among the first this many free subnets; `listed_at`: the revision
        of `leases` (0: unknown)."""
        taken = taken or []
        mine = [x for x in leases if _is_ours(config, x.attrs, attrs)]
        _refuse_other_node(mine, attrs)
        # An operator's reservation for our IP wins over an old lease of ours.
        mine.sort(key=lambda x: (not x.reserved, x.key != previous))
        for lease in mine:
            if _fits(config, lease.key):
                log.info(
                    "reusing the lease of our public IP",
                    extra={"subnet": str(lease.key), "reserved": lease.reserved},
                )
                return self._take_over(lease, attrs)
            if lease.reserved:  # an operator's key: never delete it, just do not use it
                log.warning(
                    "ignoring the reservation for our public IP: it is outside the configured pool",
                    extra={"subnet": str(lease.key), "pool": _pool(config)},
                )
                continue
            log.warning(
                "deleting our old lease: it is outside the configured pool",
                extra={"subnet": str(lease.key), "pool": _pool(config)},
            )
            if not self.registry.delete_lease(lease):
                return None
            leases = [x for x in leases if x.key != lease.key]

        v4 = v6 = None
        if config.enable_ipv4:
            v4 = _pick(
                "IPv4",
                previous.v4,
                config.in_pool,
                [x.key.v4 for x in leases],
                [x.v4 for x in taken],
                lambda used: _free_subnets(config, used, limit),
                self._rng,
            )
            if v4 is None:
                self._out_of_subnets(config, leases)
        if config.enable_ipv6:
            v6 = _pick(
                "IPv6",
                previous.v6,
                config.ipv6_in_pool,
                [x.key.v6 for x in leases],
                [x.v6 for x in taken],
                lambda used: _free_ipv6_subnets(config, used, limit),
                self._rng,
            )
            if v6 is None:
                raise OutOfSubnetsError(
                    f"out of IPv6 subnets: all {config.ipv6_subnet_count} "
                    f"/{config.ipv6_subnet_len} subnets of {config.ipv6_network} are taken",
                    "free some or widen IPv6Network/IPv6SubnetMin/IPv6SubnetMax",
                )
        created = self.registry.create_lease(LeaseKey(v4, v6), attrs, self.lease_ttl)
        if created is None or v4 is None or v6 is None:
            return created
        return None if self._collides(created, listed_at) else created

    def _collides(self, lease: Lease, listed_at: int = 0) -> bool:
        """A dual-stack key that shares a half with a lease written before it: ours goes.

        Dual-stack keys name both halves, so two nodes that listed at the same time
        and picked the same IPv4 (or IPv6) subnet, but not the same other half,
        both create their key.  Each checks after its create: the later of the
        two sees the earlier one and yields (a lease written between our listing
        and our create is that new, so its revision orders the two).  Only a lease
        written after our listing (revision `listed_at`) can share a half: the
        ones listed were avoided.  etcd returns just those, not all 5000 leases
        again (~0.2 s of a dual-stack node's start at that size).
        """
        recent = self.registry.leases_since(listed_at + 1) if listed_at else None
        others = recent if recent is not None else self.registry.list_all().leases
        for other in others:
            if other.key == lease.key or not other.mod_revision:
                continue
            shared = other.key.v4 == lease.key.v4 or other.key.v6 == lease.key.v6
            if shared and other.mod_revision < lease.mod_revision:
                log.warning(
                    "another node took a half of the subnet we chose at the same moment; "
                    "choosing again",
                    extra={"subnet": str(lease.key), "other": str(other.key)},
                )
                if self.registry.delete_lease(lease):
                    self._revoke_quietly(lease.lease_id)
                return True
        return False

    def _out_of_subnets(self, config: NetworkConfig, leases: list[Lease]) -> None:
        network = config.network
        assert network is not None
        in_net = [x for x in leases if x.key.v4 is not None and overlap(network, x.key.v4)]
        reserved = sum(1 for x in in_net if x.reserved)
        leased = len(in_net) - reserved
        raise OutOfSubnetsError(
            f"out of subnets: all {config.subnet_count} /{config.subnet_len} subnets of "
            f"{_pool(config)} are taken",
            f"{leased} leased, {reserved} reserved; free some with `flannelish unreserve` "
            "or widen Network/SubnetMin/SubnetMax",
        )

    def _take_over(self, current: Lease, attrs: LeaseAttrs) -> Lease | None:
        """Make `current` (a key with our PublicIP) carry `attrs`; reservations stay lease-less."""
        if current.reserved:
            if current.attrs == attrs:
                return current
            return self.registry.replace_lease(current, attrs, None)
        new = self.registry.replace_lease(current, attrs, self.lease_ttl)
        if new is not None and current.lease_id and current.lease_id != new.lease_id:
            self._revoke_quietly(current.lease_id)
        return new

    # -- renew -------------------------------------------------------------------

    def renew(self, lease: Lease) -> Lease:
        """Rewrite our key with `lease.attrs` and a fresh TTL; LeaseLostError if it is gone
        or now belongs to another node."""
        with self._own_lock:
            known = self._own.get(lease.key)
        if known is not None and known.mod_revision > lease.mod_revision:
            # Our own newer write (keeper vs. daemon): compare against that one.
            lease = Lease(
                lease.subnet,
                lease.attrs,
                known.expiration,
                known.lease_id,
                lease.ipv6_subnet,
                known.mod_revision,
            )
        new: Lease | None = None
        if not lease.reserved:
            new = self.registry.replace_lease(lease, lease.attrs, self.lease_ttl)
            if new is not None:
                self._revoke_quietly(lease.lease_id)
        if new is None:
            # Changed behind our back (or a reservation): look at what is there now.
            current = self.registry.get_lease(lease.key)
            if current is None:
                raise LeaseLostError(
                    f"the lease for {lease.key} is gone from etcd",
                    "it was revoked, deleted, or it expired",
                )
            if _holder(current.attrs) != _holder(lease.attrs):
                raise LeaseLostError(
                    f"the lease for {lease.key} now belongs to {_holder(current.attrs)}",
                )
            new = self._take_over(current, lease.attrs)
            if new is None:
                raise EtcdError(f"the lease for {lease.key} changed while renewing it")
        self._remember(new)
        return new

    def release(self, lease: Lease) -> bool:
        """Delete our lease (clean shutdown); reservations are kept.  True if deleted."""
        if lease.reserved:
            return False
        with self._own_lock:
            lease = self._own.pop(lease.key, lease)
        deleted = self.registry.delete_lease(lease)
        self._revoke_quietly(lease.lease_id)
        return deleted

    def own_lease(self, key: IPv4Network | LeaseKey) -> Lease | None:
        """The last version of our lease for `key` this manager wrote."""
        with self._own_lock:
            return self._own.get(as_key(key))

    def forget(self, key: IPv4Network | LeaseKey) -> None:
        with self._own_lock:
            self._own.pop(as_key(key), None)

    # -- list and watch ----------------------------------------------------------

    def list_leases(self) -> list[Lease]:
        """Every lease with its expiration (None for reservations), ordered by subnet."""
        leases, _ = self.registry.list_leases(with_expiry=True)
        return sorted(leases, key=lambda x: x.key.order)

    def watch_leases(
        self,
        stop: threading.Event,
        exclude: Exclude = None,
        reset_grace_s: float = RESET_GRACE_S,
    ) -> Iterator[list[Event]]:
        """Peer events: a snapshot batch first (may be empty), then live batches.

        `exclude` (our subnet, or a function returning the current one) is never reported.

        Resumes across disconnects (backoff 100 ms..5 s) and compaction (re-list
        and diff, attributes included) without missed or repeated events.  An etcd
        recreated without its data (its revision went backwards) is re-listed too;
        the peers it lost are held until they register again, or REMOVED
        `reset_grace_s` after the network config is back.  Returns when `stop` is set.
        """
        return watch_events(self.registry, stop, exclude, reset_grace_s, self._take_listing())

    def _take_listing(self) -> Snapshot | None:
        """acquire()'s listing, once, if recent: a watch from its revision + 1 misses
        nothing (our own lease, written after it, arrives as an event and is excluded)."""
        taken, self._listing = self._listing, None
        if taken is None or time.monotonic() - taken[0] > LISTING_REUSE_S:
            return None
        return taken[1]

    # -- helpers -----------------------------------------------------------------

    def _remember(self, lease: Lease) -> None:
        with self._own_lock:
            self._own[lease.key] = lease

    def _revoke_quietly(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            self.registry.revoke(lease_id)
        except EtcdError as exc:  # it expires on its own; nothing is attached to it
            log.warning("could not revoke old etcd lease %x: %s", lease_id, exc)


FlannelishErrorLike = ConfigError | EtcdError


def _pick(
    family: str,
    previous: Net | None,
    in_pool: Callable[[Net], bool],
    leased: list[Net | None],
    bad: list[Net | None],
    free: Callable[[list[Net]], list[Net]],
    rng: random.Random,
) -> Net | None:
    """One family's subnet: the previous one if usable, else a random free one (None: full)."""
    used: list[Net] = [x for x in leased + bad if x is not None]
    if previous is not None:
        if not in_pool(previous):
            log.info(
                "ignoring the previous %s subnet: not in the configured pool",
                family,
                extra={"subnet": str(previous)},
            )
        elif any(overlap(x, previous) for x in used):
            log.info(
                "ignoring the previous %s subnet: it overlaps a live lease or a bad key",
                family,
                extra={"subnet": str(previous)},
            )
        else:
            return previous
    candidates = free(used)
    return rng.choice(candidates) if candidates else None


def _free_subnets(config: NetworkConfig, used: list[IPv4Network], limit: int) -> list[IPv4Network]:
    return _free(config.subnet_candidates(), used, config.subnet_len, limit)


def _free_ipv6_subnets(
    config: NetworkConfig, used: list[IPv6Network], limit: int
) -> list[IPv6Network]:
    return _free(config.ipv6_subnet_candidates(), used, config.ipv6_subnet_len, limit)


def _free(candidates: Iterator[Net], used: list[Net], length: int, limit: int) -> list[Net]:
    taken = set(used)
    # Leases of another size (an old config, a foreign tool) are checked by overlap.
    odd = [x for x in used if x.prefixlen != length]
    free: list[Net] = []
    for candidate in candidates:
        if candidate in taken or any(overlap(candidate, o) for o in odd):
            continue
        free.append(candidate)
        if len(free) >= limit:
            break
    return free


def _check_attrs(config: NetworkConfig, attrs: LeaseAttrs) -> None:
    """An IPv6 network needs our IPv6 address: without it no peer can reach us."""
    if config.enable_ipv6 and attrs.public_ipv6 is None:
        raise ConfigError(
            "EnableIPv6 is set but this node has no IPv6 address to advertise",
            "give --public-ipv6, or an --iface with a global IPv6 address",
        )


def _is_ours(config: NetworkConfig, theirs: LeaseAttrs, ours: LeaseAttrs) -> bool:
    """A lease of this node: same PublicIP (IPv4 networks), same PublicIPv6 (IPv6
    networks), or our node ID.  0.0.0.0, which every IPv6-only node advertises,
    identifies nobody (upstream IPv6-only nodes collide on it)."""
    if ours.node_id is not None and theirs.node_id == ours.node_id:
        return True
    by_v4 = config.enable_ipv4 and not ours.public_ip.is_unspecified
    if by_v4 and theirs.public_ip == ours.public_ip:
        return True
    by_v6 = config.enable_ipv6 and ours.public_ipv6 is not None
    return by_v6 and theirs.public_ipv6 == ours.public_ipv6


def _fits(config: NetworkConfig, key: LeaseKey) -> bool:
    """The key has exactly the families the config enables, each in its pool."""
    if (key.v4 is not None) != config.enable_ipv4 or (key.v6 is not None) != config.enable_ipv6:
        return False
    return (key.v4 is None or config.in_pool(key.v4)) and (
        key.v6 is None or config.ipv6_in_pool(key.v6)
    )


def _holder(attrs: LeaseAttrs) -> str:
    """Who a lease belongs to, for renewal: its node ID, else its public address(es)."""
    return attrs.node_id or f"{attrs.public_ip}/{attrs.public_ipv6}"


def _refuse_other_node(mine: list[Lease], attrs: LeaseAttrs) -> None:
    """A live lease for our PublicIP written by another node: two hosts share one address.

    Flannel silently takes the other host's lease (its #51/#1289/#1810); both
    hosts then fight over one subnet.  Only a lease that names another node ID
    refuses us: one without an ID (flanneld's, a reservation) is reused as before.
    """
    if attrs.node_id is None:
        return
    for lease in mine:
        other = lease.attrs.node_id
        if other is not None and other != attrs.node_id and not lease.reserved:
            raise DuplicateNodeError(
                f"PublicIP {_addresses(attrs)} is already held by another node "
                f"(lease {lease.key}, node ID {other[:8]}…, ours {attrs.node_id[:8]}…)",
                "two hosts use the same public IP: give this one its own --public-ip/--iface, "
                "or stop the other; if this host was re-imaged, wait for that lease to expire "
                "or delete its key",
            )


def _addresses(attrs: LeaseAttrs) -> str:
    if attrs.public_ip.is_unspecified and attrs.public_ipv6 is not None:
        return str(attrs.public_ipv6)
    return str(attrs.public_ip)


def _pool(config: NetworkConfig) -> str:
    return f"{config.network} ({config.subnet_min}..{config.subnet_max})"
