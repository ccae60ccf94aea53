"""Key paths and subnet-key parsing (docs/flannel-compat.md §1, example 6 of §13)."""

from ipaddress import IPv4Network, IPv6Network

import pytest

from flannelish.subnet.keys import Keys, parse_subnet_key, subnet_key

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
