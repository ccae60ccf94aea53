"""route_to, route_lookup, our blackhole route and RouteResource's takeover of flanneld's
routes, against the real kernel in a namespace made by the test."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannelish.kernel.netlink import AF_INET6, Route, RouteExists
from flannelish.kernel.rawnetlink import RawNetlink
from flannelish.kernel.resources import RouteResource
from flannelish.testing.proc import run


@pytest.fixture
def ns(netns_factory):
    name = netns_factory.create("rt")
    ip = ["ip", "-n", name]
    run([*ip, "link", "set", "lo", "up"])
    run([*ip, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
    run([*ip, "link", "set", "eth0", "up"])
    run([*ip, "link", "set", "peer0", "up"])
    run([*ip, "addr", "add", "198.18.0.1/24", "dev", "eth0"])
    run([*ip, "addr", "add", "198.18.0.9/24", "dev", "eth0"])  # a second address
    run([*ip, "addr", "add", "fd18::1/64", "dev", "eth0", "nodad"])
    run([*ip, "addr", "add", "fd18::9/64", "dev", "eth0", "nodad"])
    nl = RawNetlink(name)
    yield name, nl
    nl.close()


def routes(name: str, *sel: str) -> list[dict]:
    family = [sel[0]] if sel and sel[0] == "-6" else []
    sel = sel[len(family) :]
    return json.loads(run(["ip", "-n", name, *family, "-j", "route", "show", *sel]).stdout or "[]")


def index(name: str, dev: str) -> int:
    return json.loads(run(["ip", "-n", name, "-j", "link", "show", dev]).stdout)[0]["ifindex"]


def test_route_to_finds_exactly_one_destination_whatever_its_protocol(ns):
    name, nl = ns
    run(["ip", "-n", name, "route", "add", "10.244.7.0/24", "via", "198.18.0.7", "dev", "eth0"])
    eth0 = index(name, "eth0")
    there = nl.route_to(IPv4Network("10.244.7.0/24"))
    assert there == Route(IPv4Network("10.244.7.0/24"), IPv4Address("198.18.0.7"), eth0, False, 3)
    assert nl.route_to(IPv4Network("10.244.7.0/25")) is None  # a longer prefix: not that route
    assert nl.route_to(IPv4Network("10.244.8.0/24")) is None  # nothing routes there


def test_route_lookup_is_ip_route_get(ns):
    name, nl = ns
    run(["ip", "-n", name, "route", "add", "203.0.113.0/24", "via", "198.18.0.254",
         "src", "198.18.0.9"])  # fmt: skip
    assert nl.route_lookup(IPv4Address("203.0.113.5")) == (index(name, "eth0"),
                                                           IPv4Address("198.18.0.9"))  # fmt: skip
    assert nl.route_lookup(IPv4Address("198.51.100.1")) is None  # no default route here


def test_blackhole_has_the_lowest_preference_and_is_not_a_peer_route(ns):
    name, nl = ns
    subnet = IPv4Network("10.244.5.0/24")
    nl.replace_blackhole(subnet)
    nl.replace_blackhole(subnet)  # idempotent
    [bh] = routes(name, "type", "blackhole")
    assert bh["dst"] == "10.244.5.0/24" and bh["protocol"] == "70"
    assert bh["metric"] == 0xFFFFFFFF
    assert nl.routes() == []  # not listed among our (unicast) peer routes
    # A bridge getting the subnet later still wins (flanneld's metric-0 blackhole would not).
    run(["ip", "-n", name, "link", "add", "cni0", "type", "bridge"])
    run(["ip", "-n", name, "link", "set", "cni0", "up"])
    run(["ip", "-n", name, "addr", "add", "10.244.5.1/24", "dev", "cni0"])
    got = json.loads(run(["ip", "-n", name, "-j", "route", "get", "10.244.5.9"]).stdout)
    assert got[0]["dev"] == "cni0"
    run(["ip", "-n", name, "link", "del", "cni0"])
    got = run(["ip", "-n", name, "route", "get", "10.244.5.9"], check=False)
    assert got.returncode != 0  # dropped by the blackhole, not sent to a default route
    nl.del_blackhole(subnet)
    nl.del_blackhole(subnet)  # already gone: fine
    assert routes(name, "type", "blackhole") == []


@pytest.mark.parametrize("onlink", [False, True], ids=["host-gw", "vxlan"])
def test_create_takes_over_flanneld_s_identical_route_in_place(ns, onlink):
    name, nl = ns
    eth0 = index(name, "eth0")
    extra = ["onlink"] if onlink else []
    gw = "10.244.7.0" if onlink else "198.18.0.7"
    run(["ip", "-n", name, "route", "add", "10.244.7.0/24", "via", gw, "dev", "eth0", *extra])
    ours = Route(IPv4Network("10.244.7.0/24"), IPv4Address(gw), eth0, onlink)
    RouteResource(nl).create(ours)
    [r] = routes(name, "10.244.7.0/24")  # replaced in place: one route, ours
    assert r["protocol"] == "70" and r["gateway"] == gw
    assert nl.routes() == [ours]


@pytest.mark.parametrize(
    "foreign",
    [
        ["via", "198.18.0.8", "dev", "eth0"],  # another gateway
        ["via", "198.18.0.7", "dev", "eth0", "onlink"],  # another flag
        ["dev", "eth0"],  # no gateway
    ],
)
def test_create_leaves_any_other_foreign_route_alone(ns, foreign):
    name, nl = ns
    eth0 = index(name, "eth0")
    run(["ip", "-n", name, "route", "add", "10.244.7.0/24", *foreign])
    before = routes(name, "10.244.7.0/24")
    with pytest.raises(RouteExists):
        RouteResource(nl).create(
            Route(IPv4Network("10.244.7.0/24"), IPv4Address("198.18.0.7"), eth0)
        )
    assert routes(name, "10.244.7.0/24") == before


# -- IPv6: the same lookups and the takeover of flanneld's flannel-v6 routes ---------------


def test_route_to_and_route_lookup_work_for_ipv6(ns):
    name, nl = ns
    eth0 = index(name, "eth0")
    run(["ip", "-n", name, "-6", "route", "add", "fd44:0:0:7::/64", "via", "fd18::7",
         "dev", "eth0"])  # fmt: skip
    there = nl.route_to(IPv6Network("fd44:0:0:7::/64"))
    # IPv6 routes read back with the kernel's default metric, 1024 (as the backends plan them).
    assert there == Route(IPv6Network("fd44:0:0:7::/64"), IPv6Address("fd18::7"), eth0, False, 3,
                          priority=1024)  # fmt: skip
    assert nl.route_to(IPv6Network("fd44:0:0:7::/80")) is None
    assert nl.route_to(IPv6Network("fd44:0:0:8::/64")) is None
    run(["ip", "-n", name, "-6", "route", "add", "fd99::/64", "via", "fd18::fe", "src", "fd18::9"])
    assert nl.route_lookup(IPv6Address("fd99::5")) == (eth0, IPv6Address("fd18::9"))
    assert nl.route_lookup(IPv6Address("fd55::1")) is None  # no IPv6 default route here


@pytest.mark.parametrize("onlink", [False, True], ids=["host-gw", "vxlan"])
def test_create_takes_over_flanneld_s_identical_ipv6_route_in_place(ns, onlink):
    name, nl = ns
    eth0 = index(name, "eth0")
    extra = ["onlink"] if onlink else []
    gw = "fd44:0:0:7::" if onlink else "fd18::7"
    run(["ip", "-n", name, "-6", "route", "add", "fd44:0:0:7::/64", "via", gw, "dev", "eth0",
         *extra])  # fmt: skip
    ours = Route(IPv6Network("fd44:0:0:7::/64"), IPv6Address(gw), eth0, onlink, priority=1024)
    RouteResource(nl, families=(AF_INET6,)).create(ours)
    [r] = routes(name, "-6", "fd44:0:0:7::/64")  # replaced in place: one route, ours
    assert r["protocol"] == "70" and r["gateway"] == gw
    assert nl.routes(family=AF_INET6) == [ours]


def test_create_leaves_another_foreign_ipv6_route_alone(ns):
    name, nl = ns
    eth0 = index(name, "eth0")
    run(["ip", "-n", name, "-6", "route", "add", "fd44:0:0:7::/64", "via", "fd18::8"])
    before = routes(name, "-6", "fd44:0:0:7::/64")
    with pytest.raises(RouteExists):
        RouteResource(nl, families=(AF_INET6,)).create(
            Route(IPv6Network("fd44:0:0:7::/64"), IPv6Address("fd18::7"), eth0)
        )
    assert routes(name, "-6", "fd44:0:0:7::/64") == before
