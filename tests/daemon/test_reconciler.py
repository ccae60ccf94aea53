"""Reconciler diff logic against the in-memory fake kernel (no root)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.vxlan import VxlanBackend

from flannelish.daemon.diff import diff
from flannelish.daemon.reconciler import Reconciler
from flannelish.errors import KernelError
from flannelish.kernel.netlink import ROUTE_PROTO, Fdb, Neigh, Route
from flannelish.kernel.resources import FdbResource, NeighResource, RouteResource
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit

NETWORK = IPv4Network("10.244.0.0/16")
OWN = IPv4Network("10.244.1.0/24")


def peer(n: int, mac: str | None = None, ip: str | None = None, btype: str = "vxlan") -> Lease:
    return Lease(
        IPv4Network(f"10.244.{n}.0/24"),
        LeaseAttrs(
            IPv4Address(ip or f"198.18.0.{n}"),
            btype,
            {"VNI": 1, "VtepMAC": mac or f"0e:00:00:00:00:{n:02x}"},
        ),
    )


@pytest.fixture
def kernel(tmp_path: Path):
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    ext = ExternalInterface(
        "eth0", eth0.index, IPv4Address("198.18.0.1"), IPv4Address("198.18.0.1"), 1500
    )
    net = SimpleNamespace(network=NETWORK, backend={"Type": "vxlan"})
    backend = VxlanBackend(BackendContext(nl, ext, net, tmp_path))
    backend.setup()
    backend.bind_lease(Lease(OWN, backend.lease_attrs()))
    nl.calls.clear()
    return SimpleNamespace(nl=nl, backend=backend, rec=Reconciler([backend]))


def entries(k):
    idx = k.backend.index
    return (
        sorted((str(n.ip), n.mac) for n in k.nl.neighs(idx)),
        sorted((f.mac, str(f.dst)) for f in k.nl.fdbs(idx)),
        sorted((str(r.dst), str(r.gateway)) for r in k.nl.routes()),
    )


def test_new_peer_is_programmed_neigh_then_fdb_then_route(kernel):
    result = kernel.rec.reconcile([peer(2)])
    assert result.changes == 3 and result.errors == 0
    # A new route is created exclusively: it never replaces a route that is not ours.
    assert [op for op, _ in kernel.nl.calls] == ["replace_neigh", "replace_fdb", "add_route"]
    assert entries(kernel) == (
        [("10.244.2.0", "0e:00:00:00:00:02")],
        [("0e:00:00:00:00:02", "198.18.0.2")],
        [("10.244.2.0/24", "10.244.2.0")],
    )
    route = kernel.nl.routes()[0]
    assert route.onlink and route.proto == ROUTE_PROTO and route.oif == kernel.backend.index


def test_second_pass_with_same_peers_changes_nothing(kernel):
    kernel.rec.reconcile([peer(2), peer(3)])
    kernel.nl.calls.clear()
    assert kernel.rec.reconcile([peer(2), peer(3)]).changes == 0
    assert kernel.nl.calls == []


def test_a_quiet_pass_keeps_the_recorded_objects_and_a_changed_peer_gets_new_ones(kernel):
    """What a pass records is kept, not rebuilt, while the peer is unchanged: the
    daemon's long-lived state must not move into the memory a pass's temporaries
    took (the periodic pass of a quiet cluster would otherwise pin that memory)."""
    peers = [peer(n) for n in range(2, 6)]
    kernel.rec.reconcile(peers)
    before = kernel.rec.programmed()
    slots = {kind: dict(counts) for kind, counts in kernel.rec._state[0].refs.items()}
    kernel.rec.reconcile([*peers[:3], peer(5, mac="0e:00:00:00:00:99")])
    after = kernel.rec.programmed()
    for p in peers[:3]:
        assert after[p.key] is before[p.key]
    assert after[peers[3].key] is not before[peers[3].key]
    assert after[peers[3].key] != before[peers[3].key]
    # the slot counts follow: the old MAC's neighbour and FDB slots went, the new ones came
    refs = kernel.rec._state[0].refs
    assert {k: len(v) for k, v in refs.items()} == {k: len(v) for k, v in slots.items()}
    assert refs["fdb"] != slots["fdb"]
    kernel.rec.reconcile(peers[:3])
    assert set(kernel.rec.programmed()) == {p.key for p in peers[:3]}
    assert {k: len(v) for k, v in kernel.rec._state[0].refs.items()} == {
        "neigh": 3,
        "fdb": 3,
        "route": 3,
    }


def test_removed_peer_loses_route_fdb_and_neigh_in_that_order(kernel):
    kernel.rec.reconcile([peer(2), peer(3)])
    kernel.nl.calls.clear()
    kernel.rec.reconcile([peer(3)])
    assert [op for op, _ in kernel.nl.calls] == ["del_route", "del_fdb", "del_neigh"]
    assert entries(kernel)[1] == [("0e:00:00:00:00:03", "198.18.0.3")]


def test_mac_change_deletes_the_stale_fdb_before_adding_the_new_one(kernel):
    kernel.rec.reconcile([peer(2)])
    kernel.nl.calls.clear()
    kernel.rec.reconcile([peer(2, mac="0e:aa:00:00:00:02")])
    ops = [op for op, _ in kernel.nl.calls]
    assert ops == ["del_fdb", "replace_neigh", "replace_fdb"]
    neighs, fdbs, _ = entries(kernel)
    assert fdbs == [("0e:aa:00:00:00:02", "198.18.0.2")]  # no stale FDB left (Flannel leaves it)
    assert neighs == [("10.244.2.0", "0e:aa:00:00:00:02")]


def test_public_ip_change_replaces_fdb_dst_in_place(kernel):
    kernel.rec.reconcile([peer(2)])
    kernel.nl.calls.clear()
    kernel.rec.reconcile([peer(2, ip="198.18.0.22")])
    assert [op for op, _ in kernel.nl.calls] == ["replace_fdb"]
    assert entries(kernel)[1] == [("0e:00:00:00:00:02", "198.18.0.22")]


def test_fdb_mac_with_an_extra_remote_is_cleaned_up(kernel):
    kernel.rec.reconcile([peer(2)])
    idx = kernel.backend.index
    kernel.nl.append_fdb(Fdb(idx, "0e:00:00:00:00:02", IPv4Address("198.18.0.99")))
    kernel.rec.reconcile([peer(2)])
    assert entries(kernel)[1] == [("0e:00:00:00:00:02", "198.18.0.2")]


def test_hand_deleted_entries_are_restored(kernel):
    kernel.rec.reconcile([peer(2)])
    idx = kernel.backend.index
    kernel.nl.del_neigh(Neigh(idx, IPv4Address("10.244.2.0"), "0e:00:00:00:00:02"))
    kernel.nl.del_route(kernel.nl.routes()[0])
    kernel.nl.calls.clear()
    result = kernel.rec.reconcile([peer(2)])
    assert [op for op, _ in kernel.nl.calls] == ["replace_neigh", "add_route"]
    assert result.changes == 2


def test_foreign_routes_are_never_touched(kernel):
    foreign = Route(IPv4Network("10.244.9.0/24"), IPv4Address("198.18.0.9"), 1, proto=4)
    kernel.nl.add_foreign_route(foreign)
    kernel.rec.reconcile([peer(2)])
    kernel.rec.reconcile([])
    assert foreign in kernel.nl.routes(proto=4)
    assert kernel.nl.routes() == []


def test_deleted_device_is_rebuilt_with_the_same_mac_and_all_peers_replayed(kernel):
    kernel.rec.reconcile([peer(2), peer(3)])
    mac, old_index = kernel.backend.mac, kernel.backend.index
    kernel.nl.delete_link(old_index)
    result = kernel.rec.reconcile([peer(2), peer(3)])
    assert result.rebuilt
    link = kernel.nl.link("flannel.1")
    assert link is not None and link.mac == mac and link.index != old_index and link.up
    assert [str(a.address) for a in kernel.nl.addrs(link.index)] == ["10.244.1.0"]
    assert len(entries(kernel)[0]) == 2 and len(entries(kernel)[2]) == 2


def test_peer_of_another_backend_type_is_skipped(kernel):
    result = kernel.rec.reconcile([peer(2, btype="host-gw")])
    assert result.skipped == 1 and result.changes == 0


def test_failed_fdb_skips_the_route_and_the_next_pass_completes_it(kernel):
    kernel.nl.fail_on = {"replace_fdb"}
    result = kernel.rec.reconcile([peer(2)])
    assert result.errors == 1
    assert kernel.nl.routes() == []  # never a route whose FDB entry is missing
    kernel.nl.fail_on = set()
    assert kernel.rec.reconcile([peer(2)]).errors == 0
    assert len(kernel.nl.routes()) == 1


def test_failed_fdb_in_an_event_takes_back_what_the_datagram_created(kernel):
    kernel.rec.reconcile([peer(2)])
    peers = {p.key: p for p in (peer(2), peer(3))}
    kernel.nl.fail_on = {"replace_fdb"}
    kernel.nl.calls.clear()
    result = kernel.rec.apply_peers([peer(3).key], peers.get)
    # One datagram: the kernel went on to the route after the failed FDB entry, so
    # the route and the neighbour are deleted again, the route first.
    assert [op for op, _ in kernel.nl.calls] == ["replace_neigh", "add_route", "del_route",
                                                  "del_neigh"]  # fmt: skip
    assert result.errors == 1 and result.needs_full
    assert [str(r.dst) for r in kernel.nl.routes()] == ["10.244.2.0/24"]
    assert len(entries(kernel)[0]) == 1
    kernel.nl.fail_on = set()
    assert kernel.rec.reconcile(list(peers.values())).errors == 0
    assert len(kernel.nl.routes()) == 2 and len(entries(kernel)[1]) == 2


def test_diff_is_empty_when_actual_matches_desired():
    nl = FakeNetlink()
    resources = [NeighResource(nl, lambda: 5), FdbResource(nl, lambda: 5), RouteResource(nl)]
    group = [
        Neigh(5, IPv4Address("10.1.2.0"), "0e:00:00:00:00:01"),
        Fdb(5, "0e:00:00:00:00:01", IPv4Address("198.18.0.7")),
        Route(IPv4Network("10.1.2.0/24"), IPv4Address("10.1.2.0"), 5, onlink=True),
    ]
    actual = {"neigh": [group[0]], "fdb": [group[1]], "route": [group[2]]}
    assert diff(resources, [group], actual).empty
    missing_route = {"neigh": [group[0]], "fdb": [group[1]], "route": []}
    assert diff(resources, [group], missing_route).apply == [[group[2]]]


def test_a_diff_of_a_kernel_that_matches_builds_no_slot_keys(monkeypatch):
    """The periodic pass of a quiet cluster compares records only: slot keys (one
    tuple each) are built for what differs, not for every object of every peer."""
    nl = FakeNetlink()
    resources = [NeighResource(nl, lambda: 5), FdbResource(nl, lambda: 5), RouteResource(nl)]
    keys = []
    for res in resources:
        monkeypatch.setattr(res, "key", lambda obj, key=res.key: keys.append(obj) or key(obj))
    groups = [
        [
            Neigh(5, IPv4Address(f"10.1.{n}.0"), f"0e:00:00:00:00:{n:02x}"),
            Fdb(5, f"0e:00:00:00:00:{n:02x}", IPv4Address(f"198.18.0.{n}")),
            Route(IPv4Network(f"10.1.{n}.0/24"), IPv4Address(f"10.1.{n}.0"), 5, onlink=True),
        ]
        for n in range(1, 50)
    ]
    actual = {kind: [g[i] for g in groups] for i, kind in enumerate(("neigh", "fdb", "route"))}
    assert diff(resources, groups, actual).empty
    assert keys == []
    stale = Route(IPv4Network("10.1.99.0/24"), IPv4Address("10.1.99.0"), 5, onlink=True)
    plan = diff(resources, groups, {**actual, "route": [*actual["route"], stale]})
    assert plan.remove == [stale] and not plan.apply
    assert keys  # what differs is looked up by its slot


def test_a_diff_against_an_empty_kernel_applies_every_peer_without_hashing_a_record():
    """A cold start: nothing to compare with, so no record is hashed into a set
    (15000 hashes of address objects at 5000 peers) and every peer is applied as planned."""

    class Unhashable(Route):  # a record whose hash would fail the test
        def __hash__(self):
            raise AssertionError("hashed")

    nl = FakeNetlink()
    resources = [NeighResource(nl, lambda: 5), FdbResource(nl, lambda: 5), RouteResource(nl)]
    resources[2].record = Unhashable
    groups = [
        [
            Neigh(5, IPv4Address(f"10.1.{n}.0"), f"0e:00:00:00:00:{n:02x}"),
            Unhashable(IPv4Network(f"10.1.{n}.0/24"), IPv4Address(f"10.1.{n}.0"), 5, onlink=True),
        ]
        for n in range(1, 20)
    ]
    plan = diff(resources, [*groups[:3], [], *groups[3:]], {"neigh": [], "fdb": [], "route": []})
    assert plan.apply == groups and not plan.remove and not plan.early
    assert plan.apply_peers == [0, 1, 2, *range(4, 20)]  # the empty group is no peer to apply


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda k: peer(2, ip="198.18.0.1"), "PublicIP 198.18.0.1 is our own"),
        (lambda k: peer(2, mac=k.backend.mac), "is our own"),
        (
            lambda k: Lease(IPv4Network("10.244.1.0/25"), peer(2).attrs),
            "overlaps our lease 10.244.1.0/24",
        ),
    ],
    ids=["own-public-ip", "own-mac", "overlapping-subnet"],
)
def test_peer_that_would_hijack_our_traffic_is_skipped(kernel, bad, reason, caplog):
    result = kernel.rec.reconcile([bad(kernel), peer(3)])
    assert result.skipped == 1 and result.errors == 0
    assert reason in caplog.text
    assert [str(r.dst) for r in kernel.nl.routes()] == ["10.244.3.0/24"]


# -- per-event path and foreign routes ------------------------------------------------


def test_one_lease_event_writes_only_that_peer_and_dumps_nothing(kernel):
    peers = {p.key: p for p in (peer(n) for n in range(2, 200))}
    kernel.rec.reconcile(list(peers.values()))
    kernel.nl.calls.clear()

    def no_dump(*_a, **_k):
        raise AssertionError("a lease event must not dump the kernel")

    kernel.nl.routes = kernel.nl.neighs = kernel.nl.fdbs = no_dump
    new = peer(200, mac="0e:00:00:00:01:c8", ip="198.18.1.200")
    peers[new.key] = new
    result = kernel.rec.apply_peers([new.key], peers.get)
    assert (result.changes, result.errors, result.full) == (3, 0, False)
    assert [op for op, _ in kernel.nl.calls] == ["replace_neigh", "replace_fdb", "add_route"]
    kernel.nl.calls.clear()
    del peers[peer(7).key]
    result = kernel.rec.apply_peers([peer(7).key], peers.get)
    assert [op for op, _ in kernel.nl.calls] == ["del_route", "del_fdb", "del_neigh"]


def test_a_changed_mac_rewrites_neigh_and_fdb_but_not_the_route(kernel):
    peers = {peer(2).key: peer(2)}
    kernel.rec.reconcile(list(peers.values()))
    kernel.nl.calls.clear()
    peers[peer(2).key] = peer(2, mac="0e:00:00:00:00:99")
    kernel.rec.apply_peers([peer(2).key], peers.get)
    assert [op for op, _ in kernel.nl.calls] == ["replace_fdb", "replace_neigh", "del_fdb"]
    assert entries(kernel)[1] == [("0e:00:00:00:00:99", "198.18.0.2")]


def test_a_foreign_route_in_the_way_is_left_alone_and_the_peer_is_skipped(kernel):
    foreign = Route(IPv4Network("10.244.2.0/24"), IPv4Address("198.18.0.254"), 1, proto=4)
    kernel.nl.add_foreign_route(foreign)
    result = kernel.rec.reconcile([peer(2), peer(3)])
    assert kernel.nl._routes[foreign.dst] == foreign
    skip = kernel.rec.skipped[LeaseKey(foreign.dst)]
    assert skip.kind == "conflict" and "does not own" in skip.reason
    assert result.skipped == 1 and LeaseKey(IPv4Network("10.244.3.0/24")) in kernel.rec.programmed()
    # The lease goes away: nothing of ours to delete there, the foreign route stays.
    kernel.rec.reconcile([peer(3)])
    assert kernel.nl._routes[foreign.dst] == foreign and not kernel.rec.skipped


def test_a_peer_a_foreign_route_blocks_gets_no_neighbour_or_fdb_entry_on_either_path(kernel):
    foreign = Route(IPv4Network("10.244.2.0/24"), IPv4Address("198.18.0.254"), 1, proto=4)
    kernel.nl.add_foreign_route(foreign)
    kernel.rec.reconcile([peer(2), peer(3)])
    neighs, fdbs, _ = entries(kernel)
    assert neighs == [("10.244.3.0", "0e:00:00:00:00:03")]
    assert fdbs == [("0e:00:00:00:00:03", "198.18.0.3")]
    kernel.nl.calls.clear()
    kernel.rec.reconcile([peer(2), peer(3)])  # still blocked: nothing written, still skipped
    assert kernel.nl.calls == [] and kernel.rec.skipped[LeaseKey(foreign.dst)].kind == "conflict"
    # A lease event for a peer the pass's listing shows blocked writes nothing either.
    peers = {p.key: p for p in (peer(2, ip="198.18.0.22"), peer(3), peer(4))}
    result = kernel.rec.apply_peers([peer(2).key], peers.get)
    assert kernel.nl.calls == [] and len(entries(kernel)[0]) == 1 and result.needs_full
    # A foreign route that came after the pass: the event's one datagram writes the
    # neighbour and FDB entry, the route's exclusive create fails, and both are taken
    # back (in reverse order).
    kernel.nl.add_foreign_route(Route(IPv4Network("10.244.4.0/24"), None, 1, proto=3))
    result = kernel.rec.apply_peers([peer(4).key], peers.get)
    assert [op for op, _ in kernel.nl.calls] == [
        "replace_neigh", "replace_fdb", "add_route", "del_fdb", "del_neigh"
    ]  # fmt: skip
    assert entries(kernel)[:2] == ([("10.244.3.0", "0e:00:00:00:00:03")],
                                   [("0e:00:00:00:00:03", "198.18.0.3")])  # fmt: skip
    assert result.needs_full and result.errors == 0
    kernel.rec.reconcile(list(peers.values()))
    assert set(kernel.rec.skipped) == {peer(2).key, peer(4).key}
    # The foreign route goes: the next pass programs the peer.
    del kernel.nl._routes[foreign.dst]
    kernel.rec.reconcile(list(peers.values()))
    assert set(kernel.rec.skipped) == {peer(4).key}
    assert ("10.244.2.0", "0e:00:00:00:00:02") in entries(kernel)[0]


def test_events_during_a_full_pass_are_applied_without_waiting_for_it(kernel):
    peers = {p.key: p for p in (peer(n) for n in range(2, 40))}
    late = peer(41, mac="0e:00:00:00:00:41", ip="198.18.0.41")
    applied: list[int] = []

    def between() -> None:
        if late.key not in peers:  # the event arrives mid-pass
            peers[late.key] = late
            kernel.rec.apply_peers([late.key], peers.get)
            applied.append(len(kernel.nl.routes()))

    kernel.rec.reconcile(list(peers.values()), between=between)
    assert applied and applied[0] < 39  # written before the pass finished its own peers
    assert late.key in kernel.rec.programmed()
    assert len(kernel.nl.routes()) == 39


def test_a_pass_never_undoes_an_event_that_came_between_its_plan_and_its_dump(kernel, monkeypatch):
    # The pass planned `gone` and not `new`; the event removes one and adds the other
    # before the pass lists the kernel: the pass must neither re-add nor delete them.
    import flannelish.daemon.reconciler as reconciler

    monkeypatch.setattr(reconciler, "SLICE_SECONDS", 0.0)  # between() after every unit of work
    peers = {p.key: p for p in (peer(n) for n in range(2, 12))}
    kernel.rec.reconcile(list(peers.values()))
    planned = list(peers.values())
    gone, new = planned[0], peer(50, mac="0e:00:00:00:00:50", ip="198.18.0.50")
    kernel.nl.del_route(kernel.nl.route_to(planned[3].key.v4))  # drift the pass repairs
    calls = []

    def between() -> None:
        calls.append(1)
        if len(calls) == len(planned):  # every peer planned, nothing listed yet
            del peers[gone.key]
            peers[new.key] = new
            kernel.rec.apply_peers([gone.key, new.key], peers.get)

    kernel.rec.reconcile(planned, between=between)
    assert len(calls) > 3 * len(planned)  # it also yielded while parsing dumps and diffing
    routes = {str(r.dst) for r in kernel.nl.routes()}
    assert str(new.key.v4) in routes and str(gone.key.v4) not in routes
    assert str(planned[3].key.v4) in routes  # the pass still repaired the drift
    assert kernel.rec.reconcile(list(peers.values())).changes == 0


def test_each_unit_of_a_long_pass_is_a_point_where_events_get_through(kernel, monkeypatch):
    import flannelish.daemon.reconciler as reconciler

    peers = [peer(n) for n in range(2, 60)]
    kernel.rec.reconcile(peers)
    monkeypatch.setattr(reconciler, "SLICE_SECONDS", 0.0)
    calls = []
    kernel.rec.reconcile(peers, between=lambda: calls.append(1))
    # one per peer planned, per entry parsed (3 kinds) and per entry diffed, at least
    assert len(calls) >= 58 + 3 * 58 + 3 * 58


def test_the_nft_monitor_ignores_deletions_of_elements_no_peer_holds():
    """Our own per-event element deletes come back as notifications: no pass for those."""
    from ipaddress import IPv4Address as Ip

    from flannelish.daemon.monitors import nft_relevant
    from flannelish.kernel.monitor import NFT_MSG_DELSETELEM, Change
    from flannelish.node.firewall import NftRules
    from flannelish.node.firewall_owner import NftOwner
    from flannelish.testing.nft import FakeNft

    owner = NftOwner(NftRules("10.244.0.0/16", "10.244.1.0/24", runner=FakeNft()))
    rec = Reconciler([owner])
    rec.reconcile([peer(2), peer(3)])
    relevant = nft_relevant([SimpleNamespace(reconciler=rec)])
    delelem = (10 << 8) | NFT_MSG_DELSETELEM

    def deleted(ip: str | None, set_name: str = "vxlan_peers") -> Change:
        return Change(delelem, family=2, table="flannelish", set_name=set_name, dst=ip and Ip(ip))

    assert relevant(deleted("198.18.0.2"))  # a current peer's element: repair it
    assert not relevant(deleted("198.18.0.9"))  # nobody's: our own delete
    assert relevant(deleted(None))  # not named: check
    assert relevant(Change((10 << 8) | 8, family=2, table="flannelish"))  # a rule deleted
    assert not relevant(Change((10 << 8) | 8, family=2, table="other"))
    assert relevant(Change((10 << 8) | 8, family=10, table="flannelish"))  # ip6 flannelish
    rec.apply_peers([peer(2).key], {peer(3).key: peer(3)}.get)  # peer 2 gone
    assert not relevant(deleted("198.18.0.2"))


def test_an_idle_loop_applies_an_event_in_the_notifying_thread(kernel):
    """One thread hand-off less: the route is in place when notify() returns."""
    import threading
    import time

    from flannelish.daemon.loop import ReconcileLoop

    peers = {p.key: p for p in (peer(2), peer(3))}
    threads: list[str] = []

    def lookup(key):
        threads.append(threading.current_thread().name)
        return peers.get(key)

    loop = ReconcileLoop(kernel.rec, lambda: list(peers.values()), 60, lookup=lookup, inline=True)
    loop.start()
    try:
        loop.trigger()
        deadline = time.monotonic() + 10
        while loop.passes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loop.passes == 1
        new = peer(4)
        peers[new.key] = new
        loop.notify([new.key])
        assert threads == [threading.current_thread().name]
        assert str(new.key.v4) in {str(r.dst) for r in kernel.nl.routes()}
    finally:
        loop.stop()


def test_a_full_pass_writes_step_by_step_and_a_failed_step_stops_only_its_peer(kernel, monkeypatch):
    import flannelish.daemon.reconciler as reconciler

    monkeypatch.setattr(reconciler, "BATCH_PEERS", 64)  # all 38 peers in one batch per step
    replace_neigh = kernel.nl.replace_neigh

    def one_bad_neigh(neigh: Neigh) -> None:
        if neigh.ip == IPv4Address("10.244.5.0"):
            raise KernelError("netlink neigh replace failed for 10.244.5.0", "injected")
        replace_neigh(neigh)

    kernel.nl.replace_neigh = one_bad_neigh
    batches: list[list[str]] = []
    apply_many = kernel.nl.apply_many
    kernel.nl.apply_many = lambda ops: batches.append([op for op, _ in ops]) or apply_many(ops)
    peers = [peer(n) for n in range(2, 40)]
    result = kernel.rec.reconcile(peers)
    assert result.errors == 1 and result.changes == 3 * 37
    # One batch per step: 38 neighbours, then the 37 FDB entries and routes of the others.
    assert batches == [["replace_neigh"] * 38, ["replace_fdb"] * 37, ["add_route"] * 37]
    routes = {str(r.dst) for r in kernel.nl.routes()}
    assert "10.244.5.0/24" not in routes and len(routes) == 37
    assert peer(5).key not in kernel.rec.programmed() and peer(6).key in kernel.rec.programmed()
    kernel.nl.replace_neigh = replace_neigh  # the next pass completes the peer
    assert kernel.rec.reconcile(peers).changes == 3 and len(kernel.nl.routes()) == 38


def test_a_cold_start_logs_one_summary_and_an_event_logs_its_peer(kernel, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="flannelish.reconciler")
    peers = {p.key: p for p in (peer(n) for n in range(2, 102))}
    kernel.rec.reconcile(list(peers.values()))
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["set neigh+fdb+route"] * 20 + [
        "set neigh+fdb+route for 80 more peers (each at debug level)"
    ]
    caplog.clear()
    new = peer(150)
    peers[new.key] = new
    kernel.rec.apply_peers([new.key], peers.get)
    [line] = [r for r in caplog.records if r.levelno == logging.INFO]
    assert line.getMessage() == "set neigh+fdb+route"
    assert line.route_dst == "10.244.150.0/24"  # the peer is named on its own line


def test_with_debug_on_every_peer_of_a_cold_start_is_named(kernel, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="flannelish.reconciler")
    kernel.rec.reconcile([peer(n) for n in range(2, 102)])
    named = [r for r in caplog.records if r.getMessage() == "set neigh+fdb+route"]
    assert len(named) == 100
    assert [r.levelno for r in named] == [logging.INFO] * 20 + [logging.DEBUG] * 80
