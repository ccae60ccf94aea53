"""The fake kernel models what callers rely on, e.g. that add_route never replaces."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from flannelish.errors import KernelError
from flannelish.kernel.netlink import AF_INET6, Addr, Route, RouteExists
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit


def test_add_route_refuses_any_route_with_the_same_destination():
    nl = FakeNetlink()
    foreign = Route(IPv4Network("10.244.7.0/24"), IPv4Address("198.18.0.9"), 2, proto=4)
    nl.add_foreign_route(foreign)
    ours = Route(IPv4Network("10.244.7.0/24"), IPv4Address("198.18.0.2"), 2)
    with pytest.raises(RouteExists) as err:
        nl.add_route(ours)
    assert err.value.errno == errno.EEXIST and isinstance(err.value, KernelError)
    assert nl.routes(proto=None) == [foreign]
    other = Route(IPv4Network("10.244.8.0/24"), IPv4Address("198.18.0.2"), 2)
    nl.add_route(other)
    assert nl.routes() == [other]
    assert nl.calls == [("add_route", ours), ("add_route", other)]  # attempts, in order


def test_create_is_exclusive_and_addresses_filter_by_family():
    nl = FakeNetlink()
    bridge = nl.create_bridge("cni0", 1450, "02:00:00:00:00:aa")
    with pytest.raises(KernelError) as err:
        nl.create_bridge("cni0", 1450, "02:00:00:00:00:aa")
    assert err.value.errno == errno.EEXIST
    v4 = Addr(bridge.index, IPv4Address("10.244.1.1"), 24)
    v6 = Addr(bridge.index, IPv6Address("fd00::1"), 64)
    nl.add_addr(v4)
    nl.add_addr(v6)
    assert nl.addrs(bridge.index) == [v4]
    assert nl.addrs(bridge.index, family=AF_INET6) == [v6]
    assert set(nl.addrs(bridge.index, family=0)) == {v4, v6}
    nl.set_link(bridge.index, up=True, promisc=True)
    link = nl.link_by_index(bridge.index)
    assert link is not None and link.up and link.promisc
