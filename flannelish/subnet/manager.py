"""SubnetManager: read the network config, acquire, renew, list and watch leases.

Acquisition follows Flannel's order (docs/flannel-compat.md §4) with its bugs fixed:

1. reuse the lease whose PublicIP is ours (a reservation stays lease-less);
2. else the previous subnet from subnet.env, if it is in the pool and
   overlaps no live lease (Flannel checks only an exact match);
3. else a random free subnet among the first 100 free ones of the pool;
4. the key is written create-only; a lost race re-runs the whole decision
   (Flannel gives up on the first lost race).

Renewal rewrites the key only if nobody else wrote it since we did (compare on
mod revision), grants a fresh etcd lease and revokes the old one, so each node
holds exactly one etcd lease.  A reservation is never given an etcd lease
(Flannel bug #1329, docs/flannel-compat.md §3).

The manager remembers the last version of each lease it wrote, so a renewal by
the LeaseKeeper and an attribute change by the daemon do not mistake each
other's writes for a foreign one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Network

from flannelish.errors import (
    ConfigError,
    DuplicateNodeError,
    EtcdAuthError,
    EtcdError,
    LeaseLostError,
    OutOfSubnetsError,
)
from flannelish.subnet.config import NetworkConfig, parse_network_config
from flannelish.subnet.keys import Keys
from flannelish.subnet.lease import Event, Lease, LeaseAttrs
from flannelish.subnet.registry import Registry
from flannelish.subnet.watch import RESET_GRACE_S, Exclude, watch_events

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_LEASE_TTL", "SubnetManager"]

DEFAULT_LEASE_TTL = 24 * 3600  # Flannel's fixed TTL
MAX_CANDIDATES = 100  # Flannel picks at random among the first 100 free subnets
MAX_ATTEMPTS = 30  # lost races before giving up (each lost race means progress elsewhere)
CONFIG_POLL_S = 1.0


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
        self._own: dict[IPv4Network, Lease] = {}
        self._own_lock = threading.Lock()

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

    def acquire(self, attrs: LeaseAttrs, previous_subnet: IPv4Network | None = None) -> Lease:
        """Take a subnet for a node advertising `attrs` (see the module docstring)."""
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                time.sleep(self._rng.uniform(0.005, 0.05) * min(attempt, 5))
            config = self._config_now()
            if not config.enable_ipv4:
                raise ConfigError("IPv6-only networks are not supported by the lease manager yet")
            if config.enable_ipv6 and attempt == 0:
                log.warning("EnableIPv6 is set, but only an IPv4 subnet is leased (not built yet)")
            listing = self.registry.list_all()
            # A key with a bad value still exists: a create there would fail every time.
            taken = [b.subnet for b in listing.bad if b.subnet is not None]
            if taken and attempt == 0:
                log.warning(
                    "%d subnet key(s) hold bad lease values; treating those subnets as taken",
                    len(taken),
                    extra={"subnets": ",".join(str(x) for x in taken[:20])},
                )
            lease = self._try_acquire(config, listing.leases, attrs, previous_subnet, taken)
            if lease is not None:
                self._remember(lease)
                return lease
            log.info("lost a race for a subnet; retrying", extra={"attempt": attempt + 1})
        raise EtcdError(
            f"could not acquire a subnet after {MAX_ATTEMPTS} attempts",
            "other nodes kept taking the chosen subnets first",
        )

    def _try_acquire(
        self,
        config: NetworkConfig,
        leases: list[Lease],
        attrs: LeaseAttrs,
        previous: IPv4Network | None,
        taken: list[IPv4Network] | None = None,
    ) -> Lease | None:
        """One decision round; None means a race was lost and the caller re-lists.

        `taken`: subnets of keys that exist but hold no usable lease (bad values)."""
        taken = taken or []
        mine = [x for x in leases if x.attrs.public_ip == attrs.public_ip]
        _refuse_other_node(mine, attrs)
        # An operator's reservation for our IP wins over an old lease of ours.
        mine.sort(key=lambda x: (not x.reserved, x.subnet != previous))
        for lease in mine:
            if config.in_pool(lease.subnet):
                log.info(
                    "reusing the lease of our public IP",
                    extra={"subnet": str(lease.subnet), "reserved": lease.reserved},
                )
                return self._take_over(lease, attrs)
            if lease.reserved:  # an operator's key: never delete it, just do not use it
                log.warning(
                    "ignoring the reservation for our public IP: it is outside the configured pool",
                    extra={"subnet": str(lease.subnet), "pool": _pool(config)},
                )
                continue
            log.warning(
                "deleting our old lease: it is outside the configured pool",
                extra={"subnet": str(lease.subnet), "pool": _pool(config)},
            )
            if not self.registry.delete_lease(lease):
                return None
            leases = [x for x in leases if x.subnet != lease.subnet]

        if previous is not None:
            previous = IPv4Network(previous, strict=False)
            clash = next((x for x in leases if x.subnet.overlaps(previous)), None)
            bad_clash = next((x for x in taken if x.overlaps(previous)), None)
            if not config.in_pool(previous):
                log.info(
                    "ignoring the previous subnet: not in the configured pool",
                    extra={"subnet": str(previous), "pool": _pool(config)},
                )
            elif clash is not None:
                log.info(
                    "ignoring the previous subnet: it overlaps a live lease",
                    extra={"subnet": str(previous), "holder": str(clash.attrs.public_ip)},
                )
            elif bad_clash is not None:
                log.warning(
                    "ignoring the previous subnet: its key holds a bad lease value",
                    extra={"subnet": str(previous), "key_subnet": str(bad_clash)},
                )
            else:
                return self.registry.create_lease(previous, attrs, self.lease_ttl)

        free = _free_subnets(config, leases, MAX_CANDIDATES, taken)
        if not free:
            network = config.network
            assert network is not None
            in_net = [x for x in leases if network.overlaps(x.subnet)]
            reserved = sum(1 for x in in_net if x.reserved)
            leased = len(in_net) - reserved
            raise OutOfSubnetsError(
                f"out of subnets: all {config.subnet_count} /{config.subnet_len} subnets of "
                f"{_pool(config)} are taken",
                f"{leased} leased, {reserved} reserved; free some with `flannelish unreserve` "
                "or widen Network/SubnetMin/SubnetMax",
            )
        choice = self._rng.choice(free)
        return self.registry.create_lease(choice, attrs, self.lease_ttl)

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
            known = self._own.get(lease.subnet)
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
            current = self.registry.get_lease(lease.subnet)
            if current is None:
                raise LeaseLostError(
                    f"the lease for {lease.subnet} is gone from etcd",
                    "it was revoked, deleted, or it expired",
                )
            if current.attrs.public_ip != lease.attrs.public_ip:
                raise LeaseLostError(
                    f"the lease for {lease.subnet} now belongs to {current.attrs.public_ip}",
                )
            new = self._take_over(current, lease.attrs)
            if new is None:
                raise EtcdError(f"the lease for {lease.subnet} changed while renewing it")
        self._remember(new)
        return new

    def release(self, lease: Lease) -> bool:
        """Delete our lease (clean shutdown); reservations are kept.  True if deleted."""
        if lease.reserved:
            return False
        with self._own_lock:
            lease = self._own.pop(lease.subnet, lease)
        deleted = self.registry.delete_lease(lease)
        self._revoke_quietly(lease.lease_id)
        return deleted

    def own_lease(self, subnet: IPv4Network) -> Lease | None:
        """The last version of our lease for `subnet` this manager wrote."""
        with self._own_lock:
            return self._own.get(subnet)

    def forget(self, subnet: IPv4Network) -> None:
        with self._own_lock:
            self._own.pop(subnet, None)

    # -- list and watch ----------------------------------------------------------

    def list_leases(self) -> list[Lease]:
        """Every lease with its expiration (None for reservations), ordered by subnet."""
        leases, _ = self.registry.list_leases(with_expiry=True)
        return sorted(leases, key=lambda x: int(x.subnet.network_address))

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
        return watch_events(self.registry, stop, exclude, reset_grace_s)

    # -- helpers -----------------------------------------------------------------

    def _remember(self, lease: Lease) -> None:
        with self._own_lock:
            self._own[lease.subnet] = lease

    def _revoke_quietly(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            self.registry.revoke(lease_id)
        except EtcdError as exc:  # it expires on its own; nothing is attached to it
            log.warning("could not revoke old etcd lease %x: %s", lease_id, exc)


FlannelishErrorLike = ConfigError | EtcdError


def _free_subnets(
    config: NetworkConfig,
    leases: list[Lease],
    limit: int,
    bad: list[IPv4Network] | None = None,
) -> list[IPv4Network]:
    subnets = [x.subnet for x in leases] + list(bad or [])
    taken = set(subnets)
    # Leases of another size (an old config, a foreign tool) are checked by overlap.
    odd = [x for x in subnets if x.prefixlen != config.subnet_len]
    free = []
    for candidate in config.subnet_candidates():
        if candidate in taken or any(candidate.overlaps(o) for o in odd):
            continue
        free.append(candidate)
        if len(free) >= limit:
            break
    return free


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
                f"PublicIP {attrs.public_ip} is already held by another node "
                f"(lease {lease.subnet}, node ID {other[:8]}…, ours {attrs.node_id[:8]}…)",
                "two hosts use the same public IP: give this one its own --public-ip/--iface, "
                "or stop the other; if this host was re-imaged, wait for that lease to expire "
                "or delete its key",
            )


def _pool(config: NetworkConfig) -> str:
    return f"{config.network} ({config.subnet_min}..{config.subnet_max})"
