"""SubnetManager for dual-stack and IPv6-only networks (docs/flannel-compat.md §1, §14)."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannelish.errors import ConfigError, DuplicateNodeError
from flannelish.subnet.keys import Keys, LeaseKey
from flannelish.subnet.lease import LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.testing.flannel import DUAL, FLANNEL_KEY, V6ONLY
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit

NODE_A, NODE_B = "a" * 32, "b" * 32


def make(config: str, seed: int = 1):
    reg = InMemoryRegistry()
    reg.put_config(config.encode())
    return reg, SubnetManager(reg, lease_ttl=100, rng=random.Random(seed))


def attrs(v4: str, v6: str | None, node: str | None = None) -> LeaseAttrs:
    return LeaseAttrs(
        IPv4Address(v4),
        "vxlan",
        {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"},
        IPv6Address(v6) if v6 else None,
        {"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"} if v6 else None,
        node,
    )


def test_dual_stack_lease_has_both_subnets_in_flannels_key_format():
    reg, mgr = make(DUAL)
    lease = mgr.acquire(attrs("198.18.0.1", "fd18::1"))
    assert lease.key.v4 is not None and lease.key.v4.subnet_of(IPv4Network("10.244.0.0/16"))
    assert lease.key.v6 is not None and lease.key.v6.subnet_of(IPv6Network("fd44::/48"))
    assert lease.key.v6.prefixlen == 64
    etcd_key = Keys("/coreos.com/network").lease(lease.key)
    match = FLANNEL_KEY.search(etcd_key)
    assert match is not None and match.group(3) == lease.key.v6.network_address.compressed
    assert reg.get_lease(lease.key) == lease


def test_ipv6_only_key_carries_flannels_placeholder():
    _, mgr = make(V6ONLY)
    lease = mgr.acquire(attrs("0.0.0.0", "fd18::1", NODE_A))
    assert lease.key.v4 is None and lease.ipv4_subnet is None
    assert lease.key.etcd.startswith("0.0.0.0-0&fd44:")
    assert FLANNEL_KEY.search(lease.key.etcd) is not None


def test_ipv6_only_nodes_do_not_collide_on_public_ip_zero():
    """Upstream every IPv6-only node advertises 0.0.0.0 and reuses the first node's lease."""
    reg, mgr = make(V6ONLY)
    a = mgr.acquire(attrs("0.0.0.0", "fd18::1", NODE_A))
    b = SubnetManager(reg, lease_ttl=100).acquire(attrs("0.0.0.0", "fd18::2", NODE_B))
    c = SubnetManager(reg, lease_ttl=100).acquire(attrs("0.0.0.0", "fd18::3"))
    assert len({a.key, b.key, c.key}) == 3
    assert len(reg.list_leases()[0]) == 3


def test_ipv6_only_restart_reuses_by_public_ipv6_and_by_node_id():
    reg, mgr = make(V6ONLY)
    first = mgr.acquire(attrs("0.0.0.0", "fd18::1", NODE_A))
    again = SubnetManager(reg, lease_ttl=100).acquire(attrs("0.0.0.0", "fd18::1", NODE_A))
    assert again.key == first.key
    moved = SubnetManager(reg, lease_ttl=100).acquire(attrs("0.0.0.0", "fd18::9", NODE_A))
    assert moved.key == first.key  # same node, new address: still its subnet
    assert len(reg.list_leases()[0]) == 1


def test_second_host_with_our_public_ipv6_is_refused():
    reg, mgr = make(V6ONLY)
    mgr.acquire(attrs("0.0.0.0", "fd18::1", NODE_A))
    with pytest.raises(DuplicateNodeError):
        SubnetManager(reg, lease_ttl=100).acquire(attrs("0.0.0.0", "fd18::1", NODE_B))


def test_previous_subnets_are_reused_per_family():
    _, mgr = make(DUAL)
    previous = LeaseKey(IPv4Network("10.244.7.0/24"), IPv6Network("fd44:0:0:9::/64"))
    lease = mgr.acquire(attrs("198.18.0.1", "fd18::1"), previous)
    assert lease.key == previous


def test_previous_ipv6_subnet_taken_by_another_node_is_not_reused():
    reg, mgr = make(DUAL)
    theirs = mgr.acquire(attrs("198.18.0.2", "fd18::2"))
    previous = LeaseKey(IPv4Network("10.244.7.0/24"), theirs.key.v6)
    lease = SubnetManager(reg, lease_ttl=100).acquire(attrs("198.18.0.1", "fd18::1"), previous)
    assert lease.key.v4 == previous.v4
    assert lease.key.v6 != theirs.key.v6


def test_ipv4_lease_is_replaced_when_the_network_turns_dual_stack():
    reg, mgr = make('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    old = mgr.acquire(attrs("198.18.0.1", "fd18::1"))
    reg.put_config(DUAL.encode())
    new = SubnetManager(reg, lease_ttl=100).acquire(attrs("198.18.0.1", "fd18::1"), old.key)
    assert new.key.v4 == old.key.v4 and new.key.v6 is not None
    assert [x.key for x in reg.list_leases()[0]] == [new.key]


def test_ipv6_network_without_an_ipv6_address_is_a_config_error():
    _, mgr = make(DUAL)
    with pytest.raises(ConfigError, match="IPv6"):
        mgr.acquire(attrs("198.18.0.1", None))


def test_renew_keeps_a_dual_stack_key():
    _, mgr = make(DUAL)
    lease = mgr.acquire(attrs("198.18.0.1", "fd18::1"))
    renewed = mgr.renew(lease)
    assert renewed.key == lease.key and renewed.lease_id != lease.lease_id
    assert mgr.own_lease(lease.key) == renewed


@pytest.mark.parametrize("half", ["v4", "v6"])
def test_two_dual_stack_nodes_racing_for_one_half_end_with_distinct_subnets(half):
    """Both listed before either wrote: the keys differ, so both creates succeed; the
    node that wrote second sees the first one's key and chooses again."""
    reg, mgr = make(DUAL, seed=7)
    other = SubnetManager(reg, lease_ttl=100, rng=random.Random(8))
    create = reg.create_lease
    first: list = []

    def racing_create(subnet, lease_attrs, ttl):
        if not first:  # the other node's create lands between our listing and ours
            key = LeaseKey(subnet.v4, IPv6Network("fd44:0:0:ffff::/64")) if half == "v4" \
                else LeaseKey(IPv4Network("10.244.250.0/24"), subnet.v6)  # fmt: skip
            first.append(create(key, attrs("198.18.0.2", "fd18::2", NODE_B), ttl))
        return create(subnet, lease_attrs, ttl)

    reg.create_lease = racing_create
    mine = mgr.acquire(attrs("198.18.0.1", "fd18::1", NODE_A))
    theirs = first[0]
    assert theirs is not None and reg.get_lease(theirs.key) == theirs  # the earlier stays
    assert mine.key.v4 != theirs.key.v4 and mine.key.v6 != theirs.key.v6
    assert {x.key for x in reg.list_leases()[0]} == {mine.key, theirs.key}
    # The node that wrote first keeps its lease when it checks after the other's write.
    assert other._collides(theirs) is False


def test_a_later_dual_stack_key_sharing_a_half_does_not_move_ours():
    reg, mgr = make(DUAL)
    mine = mgr.acquire(attrs("198.18.0.1", "fd18::1", NODE_A))
    later = reg.create_lease(
        LeaseKey(mine.key.v4, IPv6Network("fd44:0:0:ffff::/64")),
        attrs("198.18.0.2", "fd18::2", NODE_B),
        100,
    )
    assert later is not None
    assert mgr._collides(mine) is False and reg.get_lease(mine.key) == mine
    assert mgr._collides(later) is True and reg.get_lease(later.key) is None


def test_a_dual_stack_acquire_lists_every_lease_once():
    """The check for a half-collision after the create reads only what was written
    since the listing, not every lease again (0.2 s of a start at 5000 nodes)."""
    reg, mgr = make(DUAL)
    for n in range(1, 30):
        reg.create_lease(
            LeaseKey(IPv4Network(f"10.244.{n}.0/24"), IPv6Network(f"fd44:0:0:{n:x}::/64")),
            attrs(f"198.18.1.{n}", f"fd18::1:{n:x}", None),
            100,
        )
    listings = []
    list_all = reg.list_all
    reg.list_all = lambda *a, **k: listings.append(1) or list_all(*a, **k)
    mine = mgr.acquire(attrs("198.18.0.1", "fd18::1", NODE_A))
    assert mine.key.v4 is not None and mine.key.v6 is not None
    assert len(listings) == 1
