"""Netlink batching (RawNetlink.apply_many) against a real kernel, in a namespace of its own.

Many writes go out in few datagrams; each request's answer must still come
back to that request: what lands, and per failed entry the very exception
its single call raises.
"""

from __future__ import annotations

import errno
import json
import socket
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.errors import KernelError
from flannelish.kernel.netlink import RTPROT_BOOT, Addr, Fdb, Neigh, Route, RouteExists, VxlanSpec
from flannelish.kernel.rawnetlink import RawNetlink
from flannelish.testing.proc import run


@pytest.fixture
def devices(nl):
    """(vxlan ifindex, bridge ifindex): neighbour/FDB entries on one, routes via the other."""
    lo = nl.link("lo")
    vx = nl.create_vxlan(
        VxlanSpec("vx-b", 1, IPv4Address("198.18.0.5"), lo.index, 8472, "02:00:00:00:00:f1", 1450)
    )
    br = nl.create_bridge("br-b", 1500, "02:00:00:00:00:e1")
    nl.set_link(br.index, up=True)
    nl.add_addr(Addr(br.index, IPv4Address("10.98.0.1"), 16))
    return vx.index, br.index


def mixed(vx: int, br: int, n: int) -> list[tuple[str, object]]:
    """n writes: a neighbour, an FDB entry and an exclusive route add, in turn."""
    ops: list[tuple[str, object]] = []
    for i in range(n):
        mac = f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}"
        if i % 3 == 0:
            ops.append(
                ("replace_neigh", Neigh(vx, IPv4Address(f"10.{1 + i // 256}.{i % 256}.0"), mac))
            )
        elif i % 3 == 1:
            ops.append(
                ("replace_fdb", Fdb(vx, mac, IPv4Address(f"198.18.{1 + i // 250}.{1 + i % 250}")))
            )
        else:
            dst = IPv4Network((int(IPv4Address("10.100.0.0")) + 64 * i, 26))
            ops.append(
                ("add_route", Route(dst, IPv4Address(f"10.98.{i // 250}.{2 + i % 250}"), br))
            )
    return ops


@pytest.mark.parametrize("batch_max", [None, 7])
def test_a_batch_of_1000_mixed_adds_lands_exactly(nl, ns, devices, batch_max):
    if batch_max:  # many small datagrams: answers still map to their requests
        nl._rtnl.batch_max = batch_max
    vx, br = devices
    ops = mixed(vx, br, 1000)
    assert nl.apply_many(ops) == [None] * 1000
    want = {
        op: {obj for o, obj in ops if o == op}
        for op in ("replace_neigh", "replace_fdb", "add_route")
    }
    assert set(nl.neighs(vx)) == want["replace_neigh"]
    assert set(nl.fdbs(vx)) == want["replace_fdb"]
    assert set(nl.routes()) == want["add_route"]
    # iproute2 sees the same count (not only our own decoder)
    routes = json.loads(run(["ip", "-j", "-n", ns, "route", "show", "proto", "70"]).stdout)
    assert len(routes) == len(want["add_route"]) == 333
    # Replaces and deletes in one batch, again: all fine (deleting what is gone too).
    again = (
        [("del_" + op.split("_", 1)[1], obj) for op, obj in ops]
        + ops[:3]
        + [("del_route", ops[2][1])]
    )
    assert nl.apply_many(again) == [None] * len(again)
    assert nl.neighs(vx) == [ops[0][1]] and nl.fdbs(vx) == [ops[1][1]] and nl.routes() == []


def single_error(nl: RawNetlink, op: str, obj: object) -> KernelError | None:
    try:
        getattr(nl, op)(obj)
    except KernelError as exc:
        return exc
    return None


def test_a_bad_entry_in_the_middle_fails_alone_with_the_error_its_single_call_raises(nl, devices):
    vx, br = devices
    ops = mixed(vx, br, 300)
    foreign = Route(ops[152][1].dst, IPv4Address("10.98.0.9"), br, proto=RTPROT_BOOT)
    nl.add_route(foreign)  # somebody else's route in the way of entry 152
    bad = {
        100: ("replace_neigh", Neigh(9999, IPv4Address("10.200.0.1"), "0e:00:00:00:99:01")),
        151: ("replace_fdb", Fdb(vx, "0e:00:00:00:99:02", IPv4Address("198.18.0.7"))),  # fine
        152: ops[152],  # RouteExists
        200: ("replace_route", Route(IPv4Network("10.201.0.0/26"), IPv4Address("10.99.0.1"), br)),
        201: ("del_route", Route(IPv4Network("10.202.0.0/26"), None, br)),  # gone already: fine
    }
    for i, op in bad.items():
        ops[i] = op
    results = nl.apply_many(ops)
    failed = {i: r for i, r in enumerate(results) if r is not None}
    assert set(failed) == {100, 152, 200}
    assert isinstance(failed[152], RouteExists) and failed[152].dst == ops[152][1].dst
    assert failed[100].errno == errno.ENODEV and "neigh replace" in str(failed[100])
    assert failed[200].errno == errno.ENETUNREACH
    # Exactly what the single calls raise (same class, errno and message).
    nl.del_route(foreign)
    nl.add_route(foreign)
    for i in failed:
        one = single_error(nl, *ops[i])
        assert (type(one), one.errno, str(one)) == (
            type(failed[i]),
            failed[i].errno,
            str(failed[i]),
        )
    # Everything else landed.
    landed = {obj for i, (op, obj) in enumerate(ops) if i not in failed}
    have = set(nl.neighs(vx)) | set(nl.fdbs(vx)) | set(nl.routes())
    assert landed - {ops[201][1]} == have


def test_every_entry_refused_gets_its_own_answer(nl, devices):
    vx, br = devices
    ops = [op for op in mixed(vx, br, 3000) if op[0] == "add_route"]
    assert nl.apply_many(ops) == [None] * 1000
    results = nl.apply_many(ops)  # 1000 conflicts: 1000 error answers at once
    assert [type(r) for r in results] == [RouteExists] * 1000
    assert [r.dst for r in results] == [obj.dst for _, obj in ops]


def test_answers_lost_to_a_full_receive_buffer_are_reported_not_waited_for(nl, devices):
    vx, br = devices
    ops = [op for op in mixed(vx, br, 3000) if op[0] == "add_route"]
    assert nl.apply_many(ops) == [None] * 1000
    rtnl = nl._rtnl
    rtnl._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # room for a few answers
    rtnl.batch_max = 1000
    results = nl.apply_many(ops)
    assert all(r is not None for r in results)
    lost = [i for i, r in enumerate(results) if r.errno == errno.ENOBUFS]
    assert lost, "the buffer should have overflowed"
    for i, r in enumerate(results):
        if i not in lost:
            assert isinstance(r, RouteExists) and r.dst == ops[i][1].dst
    # The socket still works afterwards, answers map to their requests again.
    rtnl.batch_max = 16
    assert nl.apply_many([("del_route", obj) for _, obj in ops]) == [None] * 1000
    assert nl.routes() == []
