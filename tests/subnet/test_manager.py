"""SubnetManager on the in-memory registry: acquisition order, races, reservations, renewal."""

from __future__ import annotations

import random
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.errors import ConfigError, EtcdError, LeaseLostError, OutOfSubnetsError
from flannelish.subnet.lease import LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit

NET = IPv4Network


def attrs(ip: str, mac: str = "0a:00:00:00:00:01") -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(ip), "vxlan", {"VNI": 1, "VtepMAC": mac})


def make(config: str = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}', seed: int = 1):
    reg = InMemoryRegistry()
    reg.put_config(config.encode())
    return reg, SubnetManager(reg, lease_ttl=100, rng=random.Random(seed))


def test_vector9_fresh_allocation_is_among_the_first_100_free_subnets():
    seen = set()
    for seed in range(40):
        _, mgr = make(seed=seed)
        lease = mgr.acquire(attrs("198.18.0.1"))
        assert lease.subnet.prefixlen == 24
        assert 1 <= lease.subnet.network_address.packed[2] <= 100
        seen.add(lease.subnet)
    assert len(seen) > 10  # random, not always the first one


def test_lease_has_ttl_and_a_lease_id():
    _, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.1"))
    assert lease.lease_id and not lease.reserved
    assert lease.expiration is not None


def test_vector9_restart_with_same_public_ip_reuses_the_key_with_a_new_lease():
    reg, mgr = make()
    first = mgr.acquire(attrs("198.18.0.1"))
    again = SubnetManager(reg, lease_ttl=100).acquire(attrs("198.18.0.1", "0a:00:00:00:00:02"))
    assert again.subnet == first.subnet
    assert again.lease_id != first.lease_id
    assert again.attrs.vtep_mac == "0a:00:00:00:00:02"
    assert first.lease_id not in reg.live_lease_ids  # the old etcd lease is revoked


def test_vector9_previous_subnet_from_subnet_env_is_used_when_free():
    _, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.9"), previous_subnet=NET("10.5.34.1/24", strict=False))
    assert lease.subnet == NET("10.5.34.0/24")


def test_previous_subnet_overlapping_a_live_lease_is_ignored():
    # Flannel only checks an exact match (#1289): a /25 inside it would be shared.
    reg, mgr = make()
    reg.put_raw(NET("10.5.34.0/25"), attrs("198.18.0.2"), lease_id=77)
    lease = mgr.acquire(attrs("198.18.0.9"), previous_subnet=NET("10.5.34.0/24"))
    assert not lease.subnet.overlaps(NET("10.5.34.0/24"))


def test_previous_subnet_outside_the_pool_is_ignored():
    _, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.9"), previous_subnet=NET("10.6.34.0/24"))
    assert lease.subnet.subnet_of(NET("10.5.0.0/16"))


def test_vector9_single_subnet_pool_already_leased_is_out_of_subnets():
    _reg, mgr = make('{"Network":"10.5.0.0/16","SubnetMin":"10.5.7.0","SubnetMax":"10.5.7.0"}')
    mgr.acquire(attrs("198.18.0.1"))
    with pytest.raises(OutOfSubnetsError) as info:
        mgr.acquire(attrs("198.18.0.2"))
    assert "1 leased, 0 reserved" in str(info.value)
    assert info.value.exit_code == 5


def test_exhaustion_message_counts_leased_and_reserved():
    reg, mgr = make('{"Network":"10.5.0.0/28"}')  # /30 subnets: .4 .8 .12 usable
    reg.put_raw(NET("10.5.0.4/30"), attrs("198.18.0.50"))  # reservation
    mgr.acquire(attrs("198.18.0.1"))
    mgr.acquire(attrs("198.18.0.2"))
    with pytest.raises(OutOfSubnetsError) as info:
        mgr.acquire(attrs("198.18.0.3"))
    assert "all 3 /30 subnets" in str(info.value)
    assert "2 leased, 1 reserved" in str(info.value)


def test_reservation_is_taken_by_its_public_ip_and_stays_leaseless():
    reg, mgr = make()
    reg.put_raw(NET("10.5.200.0/24"), attrs("198.18.0.7", "0a:00:00:00:00:09"))
    lease = mgr.acquire(attrs("198.18.0.7"))
    assert lease.subnet == NET("10.5.200.0/24")
    assert lease.reserved and lease.expiration is None
    stored = reg.get_lease(lease.subnet)
    assert stored is not None and stored.lease_id == 0 and stored.attrs == attrs("198.18.0.7")
    renewed = mgr.renew(lease)
    assert renewed.reserved
    assert reg.get_lease(lease.subnet).lease_id == 0  # type: ignore[union-attr]


def test_reservation_with_unchanged_attrs_is_not_rewritten():
    reg, mgr = make()
    reg.put_raw(NET("10.5.200.0/24"), attrs("198.18.0.7"))
    rev = reg.revision
    mgr.renew(mgr.acquire(attrs("198.18.0.7")))
    assert reg.revision == rev


def test_own_lease_outside_a_shrunk_pool_is_deleted_and_replaced():
    reg, mgr = make()
    reg.put_raw(NET("10.5.250.0/24"), attrs("198.18.0.1"), lease_id=5)
    reg.put_config(b'{"Network":"10.5.0.0/16","SubnetMax":"10.5.100.0"}')
    lease = mgr.acquire(attrs("198.18.0.1"))
    assert lease.subnet != NET("10.5.250.0/24")
    assert reg.get_lease(NET("10.5.250.0/24")) is None


class _RacingRegistry(InMemoryRegistry):
    """Another node creates the chosen subnet just before we do, `races` times."""

    def __init__(self, races: int):
        super().__init__()
        self.races = races

    def create_lease(self, subnet, attrs, ttl):
        if self.races > 0:
            self.races -= 1
            self.put_raw(subnet, LeaseAttrs(IPv4Address("198.18.0.99")), lease_id=1)
        return super().create_lease(subnet, attrs, ttl)


def test_lost_create_race_is_retried_not_fatal():
    reg = _RacingRegistry(races=3)
    reg.put_config(b'{"Network":"10.5.0.0/16"}')
    lease = SubnetManager(reg).acquire(attrs("198.18.0.1"))
    assert reg.races == 0
    assert reg.get_lease(lease.subnet).attrs.public_ip == IPv4Address("198.18.0.1")  # type: ignore[union-attr]
    assert len(reg.list_leases()[0]) == 4


def test_concurrent_acquirers_get_distinct_subnets():
    reg, _ = make('{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.30.0"}')
    results = []

    def node(i: int) -> None:
        results.append(SubnetManager(reg, rng=random.Random(0)).acquire(attrs(f"198.18.0.{i}")))

    threads = [threading.Thread(target=node, args=(i,)) for i in range(1, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({x.subnet for x in results}) == 20


class _LockstepRegistry(InMemoryRegistry):
    """Every acquiring node lists the same state, round after round, and all writes of a
    round land before the next listing: k nodes booting at once on k machines, the
    worst case for create-only races."""

    def __init__(self, nodes: int):
        super().__init__()
        self._round = threading.Condition()
        self._active, self._waiting, self._generation = nodes, 0, 0
        self._snapshot = None

    def list_all(self, with_expiry=False):
        with self._round:
            generation = self._generation
            self._waiting += 1
            if self._waiting >= self._active:
                self._next_round()
            else:
                self._round.wait_for(lambda: self._generation != generation, timeout=30)
            return self._snapshot

    def _next_round(self):
        self._snapshot = InMemoryRegistry.list_all(self)
        self._waiting = 0
        self._generation += 1
        self._round.notify_all()

    def done(self):
        with self._round:
            self._active -= 1
            if self._waiting and self._waiting >= self._active:
                self._next_round()


def _boot_in_lockstep(nodes: int):
    """`nodes` managers acquire at once on a _LockstepRegistry: (leases, failures, lost races)."""
    reg = _LockstepRegistry(nodes)
    reg.put_config(b'{"Network":"10.0.0.0/8","SubnetLen":26}')
    leases, failures, lost = [], [], []

    def node(i: int) -> None:
        mgr = SubnetManager(reg, rng=random.Random(i))
        try:
            leases.append(mgr.acquire(attrs(f"198.18.{i // 250}.{i % 250 + 1}")))
        except EtcdError as exc:
            failures.append(exc)
        finally:
            lost.append(mgr.lost_races)
            reg.done()

    threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return leases, failures, lost


def test_many_nodes_booting_in_lockstep_all_get_distinct_subnets(monkeypatch):
    # Scaled down: 10 first candidates and 10 attempts for 300 nodes is the shape of
    # Flannel's 100 and 30 for 5000 nodes; without widening only ~10 win per round.
    monkeypatch.setattr("flannelish.subnet.manager.MAX_CANDIDATES", 10)
    monkeypatch.setattr("flannelish.subnet.manager.MAX_ATTEMPTS", 10)
    leases, failures, lost = _boot_in_lockstep(300)
    assert not failures
    assert len({x.subnet for x in leases}) == 300
    assert max(lost) <= 8  # candidates 10, 20, 40, ... spread 300 nodes in a few rounds


def test_without_widening_lockstep_nodes_run_out_of_attempts(monkeypatch):
    # The problem the widening fixes: with a fixed choice of the first 10 free subnets,
    # each round has at most 10 winners, and the rest give up after 10 attempts.
    monkeypatch.setattr("flannelish.subnet.manager.MAX_CANDIDATES", 10)
    monkeypatch.setattr("flannelish.subnet.manager.MAX_ATTEMPTS", 10)
    monkeypatch.setattr("flannelish.subnet.manager.MAX_WIDENING", 0)
    leases, failures, _ = _boot_in_lockstep(300)
    assert len(leases) <= 100 and len(failures) >= 200
    assert len({x.subnet for x in leases}) == len(leases)


def test_acquire_with_wait_rides_out_etcd_failures():
    reg, mgr = make()
    reg.fail_next(2)
    lease = mgr.acquire(attrs("198.18.0.1"), wait=True)
    assert reg.get_lease(lease.subnet) is not None
    assert mgr.lost_races == 0


def test_acquire_without_wait_raises_the_etcd_failure():
    reg, mgr = make()
    reg.fail_next(1)
    with pytest.raises(EtcdError):
        mgr.acquire(attrs("198.18.0.1"))


def test_acquire_with_wait_gives_up_when_stopped():
    reg, mgr = make()
    reg.fail_next(1000)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(EtcdError):
        mgr.acquire(attrs("198.18.0.1"), wait=True, stop=stop)


def test_renew_grants_a_new_lease_and_revokes_the_old_one():
    reg, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.1"))
    renewed = mgr.renew(lease)
    assert renewed.subnet == lease.subnet and renewed.lease_id != lease.lease_id
    assert reg.live_lease_ids == {renewed.lease_id}


def test_renew_of_a_deleted_lease_is_lease_lost():
    reg, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.1"))
    reg.expire(lease.subnet)
    with pytest.raises(LeaseLostError, match="gone from etcd"):
        mgr.renew(lease)


def test_renew_never_overwrites_a_subnet_another_node_took():
    reg, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.1"))
    reg.expire(lease.subnet)
    other = SubnetManager(reg).acquire(attrs("198.18.0.2"), previous_subnet=lease.subnet)
    assert other.subnet == lease.subnet
    with pytest.raises(LeaseLostError, match=r"now belongs to 198\.18\.0\.2"):
        mgr.renew(lease)
    assert reg.get_lease(lease.subnet).attrs.public_ip == IPv4Address("198.18.0.2")  # type: ignore[union-attr]


def test_renew_with_new_attrs_after_keeper_renewal_is_not_mistaken_for_foreign():
    reg, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.1"))
    mgr.renew(lease)  # the keeper's renewal moved the mod revision on
    updated = mgr.renew(
        type(lease)(lease.subnet, attrs("198.18.0.1", "0a:00:00:00:00:77"), None, 1, None, 0)
    )
    assert updated.attrs.vtep_mac == "0a:00:00:00:00:77"
    assert reg.live_lease_ids == {updated.lease_id}


def test_operator_turning_our_lease_into_a_reservation_is_respected_on_renewal():
    reg, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.1"))
    reg.put_raw(lease.subnet, lease.attrs)  # etcdctl put without --lease
    renewed = mgr.renew(lease)
    assert renewed.reserved and reg.get_lease(lease.subnet).lease_id == 0  # type: ignore[union-attr]


def test_release_deletes_our_lease_but_keeps_reservations():
    reg, mgr = make()
    lease = mgr.acquire(attrs("198.18.0.1"))
    assert mgr.release(lease)
    assert reg.get_lease(lease.subnet) is None
    reg.put_raw(NET("10.5.9.0/24"), attrs("198.18.0.2"))
    res = mgr.acquire(attrs("198.18.0.2"))
    assert not mgr.release(res)
    assert reg.get_lease(res.subnet) is not None


def test_missing_config_without_wait_names_the_key():
    reg = InMemoryRegistry("/my/net")
    with pytest.raises(ConfigError, match="not found in etcd at key /my/net/config"):
        SubnetManager(reg).get_network_config(wait=False)


def test_missing_config_is_waited_for_until_it_appears():
    reg = InMemoryRegistry()
    timer = threading.Timer(0.3, reg.put_config, args=(b'{"Network":"10.5.0.0/16"}',))
    timer.start()
    config = SubnetManager(reg).get_network_config(wait=True)
    assert config is not None and config.subnet_len == 24


def test_waiting_for_config_returns_none_when_stopped():
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert SubnetManager(InMemoryRegistry()).get_network_config(wait=True, stop=stop) is None


def test_invalid_config_in_the_store_is_a_config_error_naming_the_key():
    _reg, mgr = make('{"Network":"10.5.0.0/29"}')
    with pytest.raises(ConfigError, match=r"invalid network config at /coreos\.com/network/config"):
        mgr.get_network_config()


def test_etcd_outage_while_waiting_for_config_is_retried():
    reg, mgr = make()
    reg.fail_next(2)
    assert mgr.get_network_config(wait=True) is not None


def test_etcd_failure_without_wait_is_raised():
    reg, mgr = make()
    reg.fail_next(1)
    with pytest.raises(EtcdError):
        mgr.get_network_config(wait=False)


def test_waiting_for_a_missing_config_logs_the_expected_key(caplog):
    reg = InMemoryRegistry("/my/net")
    threading.Timer(0.3, reg.put_config, args=(b'{"Network":"10.5.0.0/16"}',)).start()
    caplog.set_level("WARNING", logger="flannelish.subnet.manager")
    SubnetManager(reg).get_network_config(wait=True)
    assert any(
        "network config not found in etcd at key /my/net/config" in r.getMessage()
        for r in caplog.records
    )


def test_reservation_outside_the_pool_is_ignored_but_never_deleted():
    reg, mgr = make('{"Network":"10.5.0.0/16","SubnetMax":"10.5.100.0"}')
    reg.put_raw(NET("10.5.250.0/24"), attrs("198.18.0.1"))
    lease = mgr.acquire(attrs("198.18.0.1"))
    assert lease.subnet != NET("10.5.250.0/24") and not lease.reserved
    assert reg.get_lease(NET("10.5.250.0/24")) is not None
