"""RawNetlink against a real kernel, in a namespace of its own.

What the kernel holds is read back independently, with pyroute2 (a dev
dependency used only here, as an oracle) or iproute2.
"""

from __future__ import annotations

import errno
import json
import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from pyroute2 import IPRoute

from flannelish.errors import KernelError
from flannelish.kernel.netlink import (
    AF_INET6,
    RTPROT_BOOT,
    Addr,
    Fdb,
    Neigh,
    Route,
    RouteExists,
    VxlanSpec,
)
from flannelish.kernel.netns import in_netns, open_netns
from flannelish.kernel.rawnetlink import RawNetlink
from flannelish.testing.proc import run


@pytest.fixture
def oracle(ns):
    with in_netns(ns):  # the socket stays bound to the namespace it was opened in
        ipr = IPRoute()
    yield ipr
    ipr.close()


def ip(ns: str, *args: str) -> list[dict]:
    return json.loads(run(["ip", "-j", "-d", "-n", ns, *args]).stdout or "[]")


def test_bridge_veth_and_link_settings_read_back_like_pyroute2_sees_them(
    nl, ns, oracle, netns_factory
):
    bridge = nl.create_bridge("br-t", 1400, "02:00:00:00:00:b1")
    with pytest.raises(KernelError) as err:
        nl.create_bridge("br-t", 1400, "02:00:00:00:00:b1")
    assert err.value.errno == errno.EEXIST
    pod = netns_factory.create("pod")
    pod_fd = open_netns(f"/run/netns/{pod}")
    try:
        veth = nl.create_veth("veth-t", "eth0", pod_fd, 1400, "02:00:00:00:00:c1")
        with RawNetlink(pod_fd) as inside:
            peer = inside.link("eth0")
            assert peer is not None and peer.mac == "02:00:00:00:00:c1"
            assert peer.peer_index == veth.index and veth.peer_index == peer.index
            assert inside.link_by_index(peer.index) == peer
    finally:
        os.close(pod_fd)
    nl.set_link(veth.index, master=bridge.index, up=True)
    nl.set_link(bridge.index, up=True, promisc=True)
    nl.set_hairpin(veth.index, True)

    (msg,) = oracle.link("get", index=veth.index)
    assert msg.get("IFLA_MASTER") == bridge.index and msg.get("IFLA_MTU") == 1400
    assert ip(ns, "link", "show", "veth-t")[0]["linkinfo"]["info_slave_data"]["hairpin"] is True
    got = nl.link("br-t")
    (msg,) = oracle.link("get", index=bridge.index)
    assert got is not None and got.kind == "bridge" and got.promisc
    assert (got.index, got.name, got.mac, got.mtu) == (
        msg["index"],
        msg.get("IFLA_IFNAME"),
        msg.get("IFLA_ADDRESS"),
        msg.get("IFLA_MTU"),
    )
    assert {link.name for link in nl.links()} == {m.get("IFLA_IFNAME") for m in oracle.link("dump")}
    assert nl.link_by_index(veth.index).master == bridge.index
    nl.delete_link(veth.index)
    nl.delete_link(veth.index)  # already gone: fine
    assert nl.link("veth-t") is None and nl.link_by_index(veth.index) is None


def test_vxlan_device_attributes(nl, ns, oracle):
    lo = nl.link("lo")
    spec = VxlanSpec(
        "vx-t", 7, IPv4Address("198.18.0.5"), lo.index, 8472, "02:00:00:00:00:d1", 1450
    )
    link = nl.create_vxlan(spec)
    data = ip(ns, "link", "show", "vx-t")[0]["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["local"], data["learning"]) == (
        7,
        8472,
        "198.18.0.5",
        False,
    )
    assert link.vxlan is not None and (link.vxlan.vni, link.vxlan.port) == (7, 8472)
    assert link.vxlan.local == IPv4Address("198.18.0.5") and link.vxlan.link == lo.index
    (msg,) = oracle.link("get", index=link.index)
    assert msg.get("IFLA_ADDRESS") == link.mac and msg.get("IFLA_MTU") == 1450


def test_addresses_of_both_families(nl, ns, oracle):
    dummy = nl.create_bridge("br-a", 1500, "02:00:00:00:00:a1")
    nl.set_link(dummy.index, up=True)
    v4 = Addr(dummy.index, IPv4Address("10.99.0.1"), 24)
    v6 = Addr(dummy.index, IPv6Address("fd99::1"), 64)
    nl.add_addr(v4)
    nl.add_addr(v4)  # already there: fine
    nl.add_addr(v6)
    assert nl.addrs(dummy.index) == [v4]
    assert nl.addrs(dummy.index, family=AF_INET6) == [v6]  # no DAD: no tentative flag
    seen = {(m.get("IFA_ADDRESS"), m["prefixlen"]) for m in oracle.addr("dump", index=dummy.index)}
    assert {("10.99.0.1", 24), ("fd99::1", 64)} <= seen
    nl.del_addr(v4)
    nl.del_addr(v6)
    assert nl.addrs(dummy.index, family=0) == [
        a for a in nl.addrs(dummy.index, family=0) if a.address.is_link_local
    ]


def test_add_route_is_exclusive_replace_overwrites_and_dumps_round_trip(nl, ns, oracle):
    dev = nl.create_bridge("br-r", 1500, "02:00:00:00:00:e1")
    nl.set_link(dev.index, up=True)
    nl.add_addr(Addr(dev.index, IPv4Address("10.98.0.1"), 24))
    nl.add_addr(Addr(dev.index, IPv6Address("fd98::1"), 64))
    foreign = Route(
        IPv4Network("10.244.7.0/24"), IPv4Address("10.98.0.9"), dev.index, proto=RTPROT_BOOT
    )
    nl.add_route(foreign)
    ours = Route(IPv4Network("10.244.7.0/24"), IPv4Address("10.98.0.2"), dev.index)
    with pytest.raises(RouteExists) as err:
        nl.add_route(ours)  # never replaces a route somebody else made
    assert err.value.errno == errno.EEXIST and err.value.dst == ours.dst
    assert nl.routes() == [] and foreign in nl.routes(proto=None)

    onlink = Route(IPv4Network("10.244.8.0/24"), IPv4Address("10.244.8.0"), dev.index, onlink=True)
    metric = Route(IPv4Network("10.244.9.0/24"), None, dev.index, priority=7)
    nl.add_route(onlink)
    nl.replace_route(metric)
    assert set(nl.routes()) == {onlink, metric}  # read back equal to what was written
    dsts = {(m.get("RTA_DST"), m["dst_len"]) for m in oracle.route("dump", proto=0x46)}
    assert dsts == {("10.244.8.0", 24), ("10.244.9.0", 24)}
    nl.replace_route(
        Route(IPv4Network("10.244.9.0/24"), IPv4Address("10.98.0.3"), dev.index, priority=7)
    )
    assert {r.gateway for r in nl.routes()} == {IPv4Address("10.244.8.0"), IPv4Address("10.98.0.3")}

    v6 = Route(IPv6Network("fd97::/64"), IPv6Address("fd98::2"), dev.index, proto=RTPROT_BOOT)
    nl.add_route(v6)
    assert [r.dst for r in nl.routes(proto=RTPROT_BOOT, family=AF_INET6)] == [v6.dst]
    for route in (onlink, metric, v6):
        nl.del_route(route)
    nl.del_route(onlink)  # already gone: fine
    assert nl.routes() == [] and foreign in nl.routes(proto=None)


def test_neighbour_and_fdb_entries_and_sysctl(nl, ns):
    lo = nl.link("lo")
    link = nl.create_vxlan(
        VxlanSpec("vx-n", 1, IPv4Address("198.18.0.5"), lo.index, 8472, "02:00:00:00:00:f1", 1450)
    )
    neigh = Neigh(link.index, IPv4Address("10.244.3.0"), "0e:00:00:00:00:03")
    fdb = Fdb(link.index, "0e:00:00:00:00:03", IPv4Address("198.18.0.3"))
    nl.replace_neigh(neigh)
    nl.replace_fdb(fdb)
    nl.replace_fdb(Fdb(link.index, "0e:00:00:00:00:03", IPv4Address("198.18.0.4")))
    assert nl.neighs(link.index) == [neigh]
    assert nl.fdbs(link.index) == [Fdb(link.index, "0e:00:00:00:00:03", IPv4Address("198.18.0.4"))]
    nl.del_neigh(neigh)
    nl.del_fdb(nl.fdbs(link.index)[0])
    nl.del_neigh(neigh)  # already gone: fine
    assert nl.neighs(link.index) == [] and nl.fdbs(link.index) == []

    nl.sysctl("net.ipv4.ip_forward", "1")
    nl.sysctl("net.ipv4.conf.no-such-dev.forwarding", "1")  # absent: skipped
    assert run(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"]).stdout == "1\n"
