"""--iface-can-reach against the real kernel in a namespace the test makes: an IPv4 or
an IPv6 destination picks the interface of the kernel's route to it (`ip route get`),
and both families' addresses come from that interface (flanneld's flag, for IPv6 too)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from flannelish.daemon.iface import select_interface
from flannelish.errors import ConfigError
from flannelish.kernel.rawnetlink import RawNetlink
from flannelish.testing.proc import run


@pytest.fixture
def nl(netns_factory):
    """eth0: 198.18.0.1 and fd18::1 (the default routes); eth1: 172.31.0.5, fd31::5 and
    fd31::6, the way to 203.0.113.0/24 and fd99::/64 (the latter from fd31::6)."""
    name = netns_factory.create("ifr")
    ip = ["ip", "-n", name]
    run([*ip, "link", "set", "lo", "up"])
    for dev, peer in (("eth0", "p0"), ("eth1", "p1")):
        run([*ip, "link", "add", dev, "type", "veth", "peer", "name", peer])
        run([*ip, "link", "set", dev, "up"])
        run([*ip, "link", "set", peer, "up"])
    for dev, addr in (("eth0", "198.18.0.1/24"), ("eth1", "172.31.0.5/24")):
        run([*ip, "addr", "add", addr, "dev", dev])
    for dev, addr in (("eth0", "fd18::1/64"), ("eth1", "fd31::5/64"), ("eth1", "fd31::6/64")):
        run([*ip, "addr", "add", addr, "dev", dev, "nodad"])
    run([*ip, "route", "add", "default", "via", "198.18.0.254"])
    run([*ip, "-6", "route", "add", "default", "via", "fd18::fe"])
    run([*ip, "route", "add", "203.0.113.0/24", "via", "172.31.0.254"])
    run([*ip, "-6", "route", "add", "fd99::/64", "via", "fd31::fe", "src", "fd31::6"])
    netlink = RawNetlink(name)
    netlink.netns_name = name  # type: ignore[attr-defined]  # for the test that drops a route
    yield netlink
    netlink.close()


def test_an_ipv6_destination_picks_its_route_s_interface_and_source(nl):
    ext = select_interface(nl, can_reach="fd99::1", ipv4=False, ipv6=True)
    assert (ext.name, ext.address6, ext.public_ipv6) == ("eth1", IPv6Address("fd31::6"),
                                                        IPv6Address("fd31::6"))  # fmt: skip
    # Dual-stack: the IPv4 address is that interface's too, not the default route's.
    ext = select_interface(nl, can_reach="fd99::1", ipv4=True, ipv6=True)
    assert (ext.name, ext.address, ext.public_ip) == ("eth1", IPv4Address("172.31.0.5"),
                                                      IPv4Address("172.31.0.5"))  # fmt: skip
    assert ext.address6 == IPv6Address("fd31::6")
    # Through the IPv6 default route: eth0 and its addresses.
    ext = select_interface(nl, can_reach="fd55::1", ipv4=True, ipv6=True)
    assert (ext.name, ext.address, ext.address6) == ("eth0", IPv4Address("198.18.0.1"),
                                                     IPv6Address("fd18::1"))  # fmt: skip


def test_an_ipv4_destination_also_detects_the_interface_s_ipv6_address(nl):
    ext = select_interface(nl, can_reach="203.0.113.7", ipv4=True, ipv6=True)
    assert (ext.name, ext.address) == ("eth1", IPv4Address("172.31.0.5"))
    # The interface's first global IPv6 address, in the kernel's order (not eth0's).
    assert ext.address6 in (IPv6Address("fd31::5"), IPv6Address("fd31::6"))
    assert ext.public_ipv6 == ext.address6


def test_public_ipv6_overrides_what_can_reach_detected(nl):
    ext = select_interface(nl, can_reach="fd99::1", public_ipv6="fd77::1", ipv4=False, ipv6=True)
    assert ext.name == "eth1" and ext.address6 == IPv6Address("fd31::6")
    assert ext.public_ipv6 == IPv6Address("fd77::1")


def test_an_unreachable_ipv6_destination_is_a_config_error(nl):
    run(["ip", "-n", nl.netns_name, "-6", "route", "del", "default"])
    with pytest.raises(ConfigError, match="no route to --iface-can-reach fd55::1"):
        select_interface(nl, can_reach="fd55::1", ipv4=False, ipv6=True)
