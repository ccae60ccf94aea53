"""Peer admission: which leases may reach the kernel (no root)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannelish.daemon.admission import AdmissionRules, check_lease
from flannelish.daemon.peers import PeerTable
from flannelish.kernel.resources import Skip
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Event, EventType, Lease, LeaseAttrs

pytestmark = pytest.mark.unit

OWN = IPv4Network("10.244.1.0/24")


def lease(subnet: str, ip: str = "198.18.0.9", mac: str = "0e:00:00:00:00:09", rev: int = 0):
    attrs = LeaseAttrs(IPv4Address(ip), "vxlan", {"VNI": 1, "VtepMAC": mac})
    return Lease(IPv4Network(subnet), attrs, mod_revision=rev)


def rules(**kw) -> AdmissionRules:
    def validate(peer: Lease) -> Skip | None:
        return None if peer.attrs.vtep_mac else Skip("no MAC", "vtep-mac")

    base = dict(
        network=IPv4Network("10.244.0.0/16"),
        subnet_len=24,
        own_ips=frozenset({IPv4Address("198.18.0.1")}),
        own_subnet=lambda: LeaseKey(OWN),
        validate=validate,
        claims=lambda p: (("vtep-mac", p.attrs.vtep_mac),),
    )
    base.update(kw)
    return AdmissionRules(**base)


@pytest.mark.parametrize(
    ("subnet", "ip", "kind"),
    [
        ("8.8.8.8/32", "198.18.0.9", "subnet-length"),
        ("128.0.0.0/1", "198.18.0.9", "subnet-length"),
        ("198.18.0.0/24", "198.18.0.9", "outside-network"),  # the underlay's own prefix
        ("0.0.0.0/0", "198.18.0.9", "subnet-length"),
        ("10.244.5.0/25", "198.18.0.9", "subnet-length"),  # a slice of another node's /24
        ("10.245.0.0/24", "198.18.0.9", "outside-network"),
        ("10.244.1.0/24", "198.18.0.9", "overlap"),
        ("10.244.2.0/24", "10.244.7.1", "public-ip"),  # inside the pod network
        ("10.244.2.0/24", "198.18.0.1", "public-ip"),  # ours
        ("10.244.2.0/24", "224.0.0.1", "public-ip"),
        ("10.244.2.0/24", "127.0.0.1", "public-ip"),
        ("10.244.2.0/24", "0.0.0.0", "public-ip"),
        ("10.244.2.0/24", "255.255.255.255", "public-ip"),
    ],
)
def test_bad_leases_are_rejected_with_their_reason(subnet, ip, kind):
    skip = check_lease(lease(subnet, ip), rules())
    assert skip is not None and skip.kind == kind, skip


def test_a_good_lease_is_admitted():
    assert check_lease(lease("10.244.2.0/24"), rules()) is None


def test_backend_validation_is_part_of_admission():
    bad = Lease(IPv4Network("10.244.2.0/24"), LeaseAttrs(IPv4Address("198.18.0.9"), "vxlan", {}))
    skip = check_lease(bad, rules())
    assert skip is not None and skip.kind == "vtep-mac"


def test_a_duplicate_mac_waits_until_the_first_holder_leaves():
    table = PeerTable(OWN, rules())
    first, clone = lease("10.244.2.0/24", rev=5), lease("10.244.3.0/24", "198.18.0.3", rev=9)
    assert table.apply([Event(EventType.ADDED, clone), Event(EventType.ADDED, first)]) == {
        first.key
    }
    assert [p.key for p in table.snapshot()] == [first.key]
    ((_, why),) = table.rejected().values()
    assert why.kind == "duplicate" and "10.244.2.0/24" in why.reason
    # The holder leaves: the waiting peer is admitted in the same batch's result.
    assert table.apply([Event(EventType.REMOVED, first)]) == {first.key, clone.key}
    assert [p.key for p in table.snapshot()] == [clone.key] and not table.rejected()


def test_an_update_keeping_its_claim_keeps_it():
    table = PeerTable(OWN, rules())
    first, clone = lease("10.244.2.0/24", rev=5), lease("10.244.3.0/24", "198.18.0.3", rev=9)
    table.apply([Event(EventType.ADDED, first), Event(EventType.ADDED, clone)])
    moved = lease("10.244.2.0/24", "198.18.0.22", rev=12)  # same MAC, new PublicIP
    assert table.apply([Event(EventType.ADDED, moved)]) == {first.key}
    assert table.get(first.key) == moved and clone.key in table.rejected()


def test_a_rejected_lease_that_turns_good_is_admitted_and_a_good_one_turning_bad_is_dropped():
    table = PeerTable(OWN, rules())
    good, bad = lease("10.244.2.0/24"), lease("10.244.2.0/24", "127.0.0.1")
    assert table.apply([Event(EventType.ADDED, bad)]) == set()
    assert table.apply([Event(EventType.ADDED, good)]) == {good.key}
    assert table.apply([Event(EventType.ADDED, bad)]) == {good.key}
    assert table.get(good.key) is None and good.key in table.rejected()


# -- IPv6: the same rules for the IPv6 half (IPv6Network, IPv6SubnetLen, PublicIPv6) ------

NET6 = IPv6Network("fd44::/48")
OWN6 = IPv6Network("fd44:0:0:1::/64")


def lease6(subnet6: str, ip6: str = "fd18::9", subnet: str = "10.244.2.0/24") -> Lease:
    attrs = LeaseAttrs(IPv4Address("198.18.0.9"), "host-gw", None, IPv6Address(ip6))
    return Lease(IPv4Network(subnet), attrs, ipv6_subnet=IPv6Network(subnet6))


def rules6(**kw) -> AdmissionRules:
    base = dict(
        network=IPv4Network("10.244.0.0/16"),
        subnet_len=24,
        own_ips=frozenset({IPv4Address("198.18.0.1"), IPv6Address("fd18::1")}),
        own_subnet=lambda: LeaseKey(OWN, OWN6),
        ipv6_network=NET6,
        ipv6_subnet_len=64,
    )
    base.update(kw)
    return AdmissionRules(**base)


@pytest.mark.parametrize(
    ("subnet6", "ip6", "kind"),
    [
        ("fd45:0:0:2::/64", "fd18::9", "outside-network"),  # outside IPv6Network
        ("2001:db8:1:2::/64", "fd18::9", "outside-network"),
        ("fd18::/64", "fd18::9", "outside-network"),  # the underlay's own prefix
        ("fd44:0:0:2::/80", "fd18::9", "subnet-length"),
        ("::/0", "fd18::9", "subnet-length"),  # the default route
        ("fd44:0:0:1::/64", "fd18::9", "overlap"),  # our own IPv6 lease
        ("fd44:0:0:2::/64", "fd44:0:0:7::2", "public-ip"),  # inside the pod network
        ("fd44:0:0:2::/64", "fd18::1", "public-ip"),  # ours
        ("fd44:0:0:2::/64", "ff02::1", "public-ip"),
        ("fd44:0:0:2::/64", "::1", "public-ip"),
        ("fd44:0:0:2::/64", "::", "public-ip"),
        ("fd44:0:0:2::/64", "fe80::9", "public-ip"),
    ],
)
def test_bad_ipv6_halves_are_rejected_with_their_reason(subnet6, ip6, kind):
    skip = check_lease(lease6(subnet6, ip6), rules6())
    assert skip is not None and skip.kind == kind, skip


def test_a_good_dual_stack_lease_is_admitted_and_a_family_mismatch_is_not():
    assert check_lease(lease6("fd44:0:0:2::/64"), rules6()) is None
    v4_only = check_lease(lease("10.244.2.0/24"), rules6())
    assert v4_only is not None and v4_only.kind == "family"
    v6_in_v4_network = check_lease(lease6("fd44:0:0:2::/64"), rules())
    assert v6_in_v4_network is not None and v6_in_v4_network.kind == "family"
