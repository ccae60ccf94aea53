"""Key paths and subnet-key parsing (docs/flannel-compat.md §1, example 6 of §13)."""

import itertools
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from flannelish.subnet.keys import (
    Keys,
    overlap,
    parse_ipv4,
    parse_subnet_key,
    subnet_key,
    within,
)

pytestmark = pytest.mark.unit

KEYS = Keys("/coreos.com/network")


def test_vector6_ipv4_key():
    assert KEYS.subnet(IPv4Network("10.5.34.0/24")) == "/coreos.com/network/subnets/10.5.34.0-24"


def test_vector6_dual_stack_key_uses_compressed_lowercase_ipv6():
    key = subnet_key(IPv4Network("10.5.34.0/24"), IPv6Network("FD00:0:0:22::/64"))
    assert key == "10.5.34.0-24&fd00:0:0:22::-64"
    assert parse_subnet_key(key) == (IPv4Network("10.5.34.0/24"), IPv6Network("fd00:0:0:22::/64"))


def test_config_key():
    assert KEYS.config == "/coreos.com/network/config"


@pytest.mark.parametrize(
    "key",
    [
        "/coreos.com/network/subnets/foo",
        "/coreos.com/network/subnets/10.5.34.1-24",  # host bits: would not round-trip
        "/coreos.com/network/subnets/10.5.34.0-33",
        "/coreos.com/network/subnets/300.5.34.0-24",
        "/coreos.com/network/subnets/x10.5.34.0-24",
        "/coreos.com/network/other/10.5.34.0-24",
    ],
)
def test_keys_that_are_not_subnet_leases_are_rejected(key):
    assert KEYS.parse(key) is None


def test_parse_accepts_bytes():
    assert KEYS.parse(b"/coreos.com/network/subnets/10.5.34.0-24") == (
        IPv4Network("10.5.34.0/24"),
        None,
    )


def _networks(rng, version):
    """Networks in one small range, so that nesting, overlap and neither all occur."""
    cls = IPv4Network if version == 4 else IPv6Network
    bits = 32 if version == 4 else 128
    base = int(cls("10.244.0.0/16" if version == 4 else "fd44::/16").network_address)
    lengths = (16, 18, 20, 24, 26, 32) if version == 4 else (16, 18, 20, 24, 64, 128)
    for _ in range(300):
        plen = rng.choice(lengths)
        host = rng.getrandbits(bits - 16) >> (bits - plen) << (bits - plen)
        yield cls((base + host, plen))


@pytest.mark.parametrize("version", [4, 6])
def test_within_and_overlap_agree_with_ipaddress_and_cache_nothing_on_the_networks(version):
    rng = random.Random(version)
    nets = list(_networks(rng, version))
    pairs = [(a, b) for a in nets[:60] for b in nets[:60]]
    for a, b in pairs:
        assert within(a, b) == a.subnet_of(b)
        assert overlap(a, b) == a.overlaps(b)
    assert sum(within(a, b) for a, b in pairs if a != b) > 10  # both answers occur
    # Ours leave the objects as they were (ipaddress's cache broadcast_address on them).
    fresh = list(_networks(random.Random(99), version))
    for a, b in itertools.pairwise(fresh):
        within(a, b), overlap(a, b)
    assert all("broadcast_address" not in vars(n) for n in fresh)


def test_within_is_false_across_families():
    assert not within(IPv4Network("10.0.0.0/24"), IPv6Network("::/0"))
    assert not overlap(IPv6Network("::/0"), IPv4Network("0.0.0.0/0"))


_IPV4_TEXTS = [
    "10.0.5.1", "0.0.0.0", "255.255.255.255", "198.18.0.7",
    "010.0.0.1", "1.2.3.04", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-1",
    " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "1.2.3.4\x00", "0x1.2.3.4", "1..2.3",
    "", "fd00::1", "::ffff:1.2.3.4", "\u0661.2.3.4", "1.2.3.4/32",
]  # fmt: skip


@pytest.mark.parametrize("text", _IPV4_TEXTS)
def test_parse_ipv4_accepts_exactly_what_ipaddress_accepts(text):
    try:
        expected = IPv4Address(text)
    except ValueError:
        with pytest.raises(ValueError):
            parse_ipv4(text)
    else:
        assert parse_ipv4(text) == expected


def _reference_parse(key):
    """The plain reading: ipaddress's parse, then the key written back must match."""
    import re

    match = re.fullmatch(r"([\d.]+)-(\d+)(?:&([a-f\d:]+)-(\d+))?", key)
    if match is None or len(key) > 64:
        return None
    ip4, len4, ip6, len6 = match.groups()
    try:
        v4 = IPv4Network(f"{ip4}/{len4}")
        v6 = IPv6Network(f"{ip6}/{len6}") if ip6 else None
    except ValueError:
        return None
    return (v4, v6) if subnet_key(v4, v6) == key else None


def test_parse_subnet_key_agrees_with_the_plain_reading_on_mutated_keys():
    rng = random.Random(7)
    seeds = ["10.5.34.0-24", "10.244.1.192-26", "0.0.0.0-0&fd00::-64",
             "10.5.34.0-24&fd00:0:0:22::-64", "255.255.255.255-32"]  # fmt: skip
    alphabet = "0123456789.-&:af/ \n\u0662"
    keys = set(seeds)
    for _ in range(3000):
        key = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(key) + 1)
            if rng.random() < 0.5 and at < len(key):
                key[at] = rng.choice(alphabet)
            else:
                key.insert(at, rng.choice(alphabet))
        keys.add("".join(key))
    accepted = 0
    for key in keys:
        assert parse_subnet_key(key) == _reference_parse(key), key
        accepted += parse_subnet_key(key) is not None
    assert 10 < accepted < len(keys) / 2  # both answers occur
