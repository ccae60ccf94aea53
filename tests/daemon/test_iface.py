"""Underlay interface / public IP selection (fake kernel, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from flannelish.daemon.iface import select_interface
from flannelish.errors import ConfigError, NotAvailableError
from flannelish.kernel.netlink import Addr
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit


@pytest.fixture
def nl():
    nl = FakeNetlink()
    lo = nl.add_link("lo", mtu=65536)
    eth0 = nl.add_link("eth0", mtu=1500)
    eth1 = nl.add_link("eth1", mtu=9000)
    nl.add_addr(Addr(lo.index, IPv4Address("127.0.0.1"), 8))
    nl.add_addr(Addr(eth0.index, IPv4Address("198.18.0.1"), 24))
    nl.add_addr(Addr(eth1.index, IPv4Address("172.31.0.5"), 24))
    nl.default_oif = eth0.index
    return nl


def test_default_is_the_default_route_interface(nl):
    ext = select_interface(nl)
    assert (ext.name, str(ext.address), str(ext.public_ip), ext.mtu) == (
        "eth0",
        "198.18.0.1",
        "198.18.0.1",
        1500,
    )


def test_iface_by_name_or_ip_first_match_wins(nl):
    assert select_interface(nl, ["missing", "eth1"]).name == "eth1"
    assert select_interface(nl, ["172.31.0.5"]).name == "eth1"


def test_iface_regex_matches_addresses_then_names(nl):
    assert select_interface(nl, regexes=[r"^172\."]).name == "eth1"
    assert select_interface(nl, regexes=["^eth1$"]).name == "eth1"


def test_public_ip_behind_nat_keeps_interface_address(nl):
    ext = select_interface(nl, ["eth0"], public_ip="203.0.113.9")
    assert str(ext.address) == "198.18.0.1" and str(ext.public_ip) == "203.0.113.9"


def test_public_ip_alone_picks_the_interface_holding_it(nl):
    assert select_interface(nl, public_ip="172.31.0.5").name == "eth1"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"ifaces": ["nope0"]}, "--iface nope0"),
        ({"regexes": ["("]}, "not a valid regex"),
        ({"public_ip": "203.0.113.9"}, "no interface holds --public-ip 203.0.113.9"),
        ({"public_ip": "banana"}, "--public-ip must be an IPv4 address"),
    ],
)
def test_bad_selection_is_a_config_error_naming_the_flag(nl, kwargs, needle):
    with pytest.raises(ConfigError) as err:
        select_interface(nl, **kwargs)
    assert needle in str(err.value)


def test_no_default_route_says_to_pass_iface(nl):
    nl.default_oif = None
    with pytest.raises(NotAvailableError, match="--iface"):
        select_interface(nl)
