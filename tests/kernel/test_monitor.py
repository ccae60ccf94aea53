"""Change notifications: only the fixed headers are decoded (no kernel needed)."""

from __future__ import annotations

import struct

import pytest

from flannelish.kernel import rtnl
from flannelish.kernel.monitor import Change, parse_changes, parse_nft_changes
from flannelish.kernel.rtnl import RTM_DELLINK, RTM_DELROUTE

pytestmark = pytest.mark.unit


def _msg(mtype: int, body: bytes) -> bytes:
    return rtnl.HDR.pack(rtnl.HDR.size + len(body), mtype, 0, 0, 0) + body


def test_change_parser_reads_link_index_and_route_protocol_from_one_datagram():
    link = _msg(RTM_DELLINK, struct.pack("=BxHiII", 0, 1, 42, 0, 0))
    route = _msg(RTM_DELROUTE, rtnl.RTMSG.pack(2, 24, 0, 0, 254, 0x46, 0, 1, 0))
    assert parse_changes(link + route) == [
        Change(RTM_DELLINK, ifindex=42),
        Change(RTM_DELROUTE, proto=0x46),
    ]


def test_change_parser_stops_on_a_truncated_header():
    assert parse_changes(b"\x03\x00\x00") == []


def test_nft_change_parser_reads_deletions_with_family_and_table():
    def nft_msg(msg: int, family: int, table: str) -> bytes:
        body = struct.pack("=BBH", family, 0, 0) + rtnl.attr(1, table.encode() + b"\0")
        return _msg((10 << 8) | msg, body)

    datagram = (
        nft_msg(2, 2, "flannelish")  # DELTABLE ip flannelish
        + nft_msg(0, 2, "flannelish")  # NEWTABLE: not a deletion
        + nft_msg(14, 10, "other")  # DELSETELEM inet other
        + _msg(RTM_DELLINK, struct.pack("=BxHiII", 0, 1, 42, 0, 0))  # not nftables
    )
    assert parse_nft_changes(datagram) == [
        Change((10 << 8) | 2, family=2, table="flannelish"),
        Change((10 << 8) | 14, family=10, table="other"),
    ]


def test_change_parser_names_what_was_deleted():
    """Route destination, neighbour IP, FDB MAC: the daemon ignores its own deletions by them."""
    from ipaddress import IPv4Address, IPv4Network

    route = _msg(
        RTM_DELROUTE,
        rtnl.RTMSG.pack(2, 26, 0, 0, 254, 0x46, 0, 1, 0)
        + rtnl.attr(rtnl.RTA_DST, bytes([10, 1, 0, 64])),
    )
    neigh = _msg(
        rtnl.RTM_DELNEIGH,
        rtnl.NDMSG.pack(2, 7, 0x80, 0, 0) + rtnl.attr(rtnl.NDA_DST, bytes([10, 1, 0, 64])),
    )
    fdb = _msg(
        rtnl.RTM_DELNEIGH,
        rtnl.NDMSG.pack(rtnl.AF_BRIDGE, 7, 0x80, 2, 0)
        + rtnl.attr(rtnl.NDA_LLADDR, rtnl.mac_bytes("0e:00:00:00:00:01")),
    )
    routes, neighs, fdbs = parse_changes(route + neigh + fdb)
    assert (routes.type, routes.proto, routes.dst) == (
        RTM_DELROUTE,
        0x46,
        IPv4Network("10.1.0.64/26"),
    )
    assert (neighs.ifindex, neighs.dst) == (7, IPv4Address("10.1.0.64"))
    assert (fdbs.ifindex, fdbs.dst) == (7, "0e:00:00:00:00:01")


def test_change_parser_names_deleted_ipv6_routes_and_neighbours():
    """IPv6 deletions (flannel-v6.<VNI>'s entries) are identified like IPv4 ones."""
    from ipaddress import IPv6Address, IPv6Network

    dst = IPv6Address("fd44:0:0:fa::").packed
    route = _msg(
        RTM_DELROUTE,
        rtnl.RTMSG.pack(10, 64, 0, 0, 254, 0x46, 0, 1, 0) + rtnl.attr(rtnl.RTA_DST, dst),
    )
    neigh = _msg(
        rtnl.RTM_DELNEIGH, rtnl.NDMSG.pack(10, 9, 0x80, 0, 0) + rtnl.attr(rtnl.NDA_DST, dst)
    )
    # Mismatched lengths (an IPv4-sized address in an IPv6 message) name nothing.
    odd = _msg(
        RTM_DELROUTE,
        rtnl.RTMSG.pack(10, 64, 0, 0, 254, 0x46, 0, 1, 0) + rtnl.attr(rtnl.RTA_DST, dst[:4]),
    )
    too_long = _msg(
        RTM_DELROUTE,
        rtnl.RTMSG.pack(10, 129, 0, 0, 254, 0x46, 0, 1, 0) + rtnl.attr(rtnl.RTA_DST, dst),
    )
    routes, neighs, bad, bad2 = parse_changes(route + neigh + odd + too_long)
    assert routes.dst == IPv6Network("fd44:0:0:fa::/64") and routes.proto == 0x46
    assert (neighs.ifindex, neighs.dst) == (9, IPv6Address("fd44:0:0:fa::"))
    assert bad.dst is None and bad2.dst is None


def test_nft_change_parser_names_each_deleted_set_element():
    from ipaddress import IPv4Address, IPv6Address

    def elem(key: bytes) -> bytes:  # NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE } }
        return rtnl.attr(1 | rtnl.NLA_F_NESTED, rtnl.attr(1 | rtnl.NLA_F_NESTED, rtnl.attr(1, key)))

    body = (
        struct.pack("=BBH", 2, 0, 0)
        + rtnl.attr(1, b"flannelish\0")
        + rtnl.attr(2, b"vxlan_peers\0")
        + rtnl.attr(
            3 | rtnl.NLA_F_NESTED,
            elem(bytes([198, 18, 0, 2])) + elem(IPv6Address("fd18::2").packed) + elem(b"\1\2"),
        )
    )
    empty = struct.pack("=BBH", 2, 0, 0) + rtnl.attr(1, b"flannelish\0")
    changes = parse_nft_changes(_msg((10 << 8) | 14, body) + _msg((10 << 8) | 14, empty))
    assert [(c.table, c.set_name, c.dst) for c in changes] == [
        ("flannelish", "vxlan_peers", IPv4Address("198.18.0.2")),
        ("flannelish", "vxlan_peers", IPv6Address("fd18::2")),
        ("flannelish", "", None),  # nothing named: the daemon treats it as wanted
    ]


@pytest.mark.netns
def test_a_real_element_deletion_is_reported_with_its_address(netns_factory):
    """The kernel's own DELSETELEM notification carries the element the parser names."""
    import subprocess
    import threading
    from ipaddress import IPv4Address

    from flannelish.kernel.monitor import ChangeMonitor

    ns = netns_factory.create("nftm")
    nft = ["ip", "netns", "exec", ns, "nft", "-f", "-"]
    setup = (
        "add table ip flannelish\n"
        "add set ip flannelish vxlan_peers { type ipv4_addr; }\n"
        "add element ip flannelish vxlan_peers { 198.18.0.2, 198.18.0.3 }\n"
    )
    subprocess.run(nft, input=setup, text=True, check=True)
    seen: list[Change] = []
    got = threading.Event()

    def on_change(changes: list[Change]) -> None:
        seen.extend(changes)
        got.set()

    monitor = ChangeMonitor(on_change, lambda c: c.table == "flannelish", netns=ns, nftables=True)
    monitor.start()
    try:
        subprocess.run(
            nft,
            input="delete element ip flannelish vxlan_peers { 198.18.0.3 }\n",
            text=True,
            check=True,
        )
        assert got.wait(5)
    finally:
        monitor.stop()
    assert [(c.family, c.set_name, c.dst) for c in seen] == [
        (2, "vxlan_peers", IPv4Address("198.18.0.3"))
    ]


@pytest.mark.netns
@pytest.mark.parametrize("filtered", [True, False])
def test_only_types_has_the_kernel_drop_other_notifications(netns_factory, filtered):
    """With ``only_types`` the thread never reads the announcement of a write (here
    a neighbour added and replaced); the deletion still arrives.  Unfiltered, it reads all."""
    import subprocess
    import threading

    from flannelish.kernel.monitor import ChangeMonitor
    from flannelish.kernel.rtnl import RTM_DELNEIGH, RTM_NEWNEIGH

    ns = netns_factory.create("mfil")
    ip = ["ip", "-n", ns]
    subprocess.run([*ip, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    subprocess.run([*ip, "link", "set", "v0", "up"], check=True)
    read: list[int] = []
    deleted = threading.Event()

    def relevant(change: Change) -> bool:
        read.append(change.type)
        if change.type == RTM_DELNEIGH:
            deleted.set()
        return False

    only = frozenset({RTM_DELNEIGH}) if filtered else None
    monitor = ChangeMonitor(lambda _changes: None, relevant, netns=ns, only_types=only)
    monitor.start()
    try:
        neigh = ["neigh", "replace", "10.244.9.9", "lladdr", "02:00:00:00:00:09", "dev", "v0"]
        for _ in range(3):
            subprocess.run([*ip, *neigh, "nud", "permanent"], check=True)
        subprocess.run([*ip, "neigh", "del", "10.244.9.9", "dev", "v0"], check=True)
        assert deleted.wait(5)
    finally:
        monitor.stop()
    if filtered:
        assert read == [RTM_DELNEIGH]
    else:
        assert RTM_NEWNEIGH in read and read[-1] == RTM_DELNEIGH


def test_type_filter_jumps_to_accept_for_each_wanted_type():
    """Load nlmsg_type, one compare per type (each jumps to accept), drop, accept."""
    from flannelish.kernel.monitor import type_filter

    insns = [struct.unpack_from("HBBI", type_filter(frozenset({16, 25, 29})), i * 8)
             for i in range(6)]  # fmt: skip
    assert insns[0] == (0x28, 0, 0, 4)
    assert [i + 1 + insns[i][1] for i in (1, 2, 3)] == [5, 5, 5]
    assert insns[4] == (0x06, 0, 0, 0) and insns[5][0] == 0x06 and insns[5][3] > 0


@pytest.mark.netns
def test_a_deleted_nexthop_of_ours_is_reported_with_its_peers_subnet_address(netns_factory):
    """Its routes go with it without a route deletion of their own: the nexthop
    deletion is what tells the daemon, and its id names the peer (nexthop_id)."""
    import subprocess
    import threading
    from ipaddress import IPv4Address, IPv4Network

    from flannelish.kernel.monitor import ChangeMonitor
    from flannelish.kernel.netlink import nexthop_id
    from flannelish.kernel.rtnl import RTM_DELNEXTHOP

    ns = netns_factory.create("mnh")
    ip = ["ip", "-n", ns]
    subprocess.run([*ip, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    for dev in ("v0", "v1"):
        subprocess.run([*ip, "link", "set", dev, "up"], check=True)
    nhid = nexthop_id(IPv4Network("10.244.7.0/24"))
    subprocess.run([*ip, "nexthop", "add", "id", str(nhid), "via", "10.244.7.0", "dev", "v0",
                    "onlink", "proto", "70"], check=True)  # fmt: skip
    seen: list[Change] = []
    done = threading.Event()

    def relevant(change: Change) -> bool:
        seen.append(change)
        done.set()
        return False

    monitor = ChangeMonitor(
        lambda _c: None, relevant, netns=ns, only_types=frozenset({RTM_DELNEXTHOP})
    )
    monitor.start()
    try:
        subprocess.run([*ip, "nexthop", "del", "id", str(nhid)], check=True)
        assert done.wait(5)
    finally:
        monitor.stop()
    assert [(c.type, c.proto, c.dst) for c in seen] == [
        (RTM_DELNEXTHOP, 70, IPv4Address("10.244.7.0"))
    ]
