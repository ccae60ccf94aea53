"""The VXLAN backend and reconciler on a real kernel, driven in-process.

Two host namespaces on the isolated underlay; leases are built by hand, so
this covers device creation, peer programming and repair without etcd.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest
from flannelish.backends.base import BackendContext
from flannelish.backends.vxlan import VxlanBackend

from flannelish.daemon.iface import select_interface
from flannelish.daemon.reconciler import Reconciler
from flannelish.kernel.netlink import nexthop_id
from flannelish.kernel.rawnetlink import RawNetlink
from flannelish.subnet.lease import Lease

from .helpers import add_pod, kernel_state, link_details, our_nexthops, ping

NET = SimpleNamespace(network=IPv4Network("10.244.0.0/16"), backend={"Type": "vxlan"})


class Node:
    def __init__(self, host, subnet: str, state_dir, impl):
        self.host = host
        self.nl = impl(host.netns)
        ext = select_interface(self.nl)
        self.backend = VxlanBackend(BackendContext(self.nl, ext, NET, state_dir))
        self.backend.setup()
        self.lease = Lease(IPv4Network(subnet), self.backend.lease_attrs())
        self.backend.bind_lease(self.lease)
        self.rec = Reconciler([self.backend])

    def close(self):
        self.nl.close()


def peered_with_pods(a: Node, b: Node, netns_factory) -> str:
    """Each node programs the other; one pod on each. Returns the pod on `a`."""
    a.rec.reconcile([b.lease])
    b.rec.reconcile([a.lease])
    pod_a = add_pod(netns_factory, a.host, a.lease.subnet, "pa", 1450)
    add_pod(netns_factory, b.host, b.lease.subnet, "pb", 1450)
    return pod_a


# What the kernel holds is read back with iproute2 (`ip -j`), independently of RawNetlink.
@pytest.fixture
def nodes(underlay, netns_factory, tmp_path):
    made = []
    for i, subnet in ((1, "10.244.1.0/24"), (2, "10.244.2.0/24")):
        host = underlay.add_host(f"h{i}")
        made.append(Node(host, subnet, tmp_path / f"h{i}", RawNetlink))
    yield made
    for node in made:
        node.close()


def test_device_has_flannel_attributes(nodes):
    a = nodes[0]
    assert a.nl.link("flannel.1") == a.nl.link("flannel.1")  # read back the same way twice
    link = a.nl.link("flannel.1")
    assert link.kind == "vxlan" and link.vxlan.port == 8472 and link.vxlan.vni == 1
    assert link.up and link.mtu == 1450 and link.mac == a.backend.mac
    assert a.nl.link("no-such-dev") is None
    info = link_details(a.host, "flannel.1")
    data = info["linkinfo"]["info_data"]
    assert info["mtu"] == 1450 and info["address"] == a.backend.mac
    assert data["id"] == 1 and data["port"] == 8472 and data["local"] == "198.18.0.1"
    assert data["learning"] is False
    addrs = a.host.run("ip", "-4", "-o", "addr", "show", "dev", "flannel.1").stdout
    assert "10.244.1.0/32" in addrs


def test_pods_ping_across_hosts_and_peer_removal_cleans_everything(nodes, netns_factory):
    a, b = nodes
    pod_a = peered_with_pods(a, b, netns_factory)
    assert ping(pod_a, "10.244.2.2")
    assert kernel_state(a.host) == {
        "neigh": [("10.244.2.0", b.backend.mac)],
        "fdb": [(b.backend.mac, "198.18.0.2")],
        "route": [("10.244.2.0/24", "10.244.2.0", "flannel.1")],
    }
    a.rec.reconcile([])
    assert kernel_state(a.host) == {"neigh": [], "fdb": [], "route": []}
    assert our_nexthops(a.host) == []  # the route's nexthop object went with it
    assert not ping(pod_a, "10.244.2.2", count=1)


def test_a_peer_route_goes_through_our_nexthop_object(nodes):
    """The kernel compares every new gateway route with all others on the device
    (docs/performance.md): a peer's route uses a nexthop object of ours instead,
    whose id its subnet fixes, and reads back with the same gateway as before."""
    a, b = nodes
    assert a.backend.nexthops  # this kernel has them (Linux 5.3+, compat mode on)
    a.rec.reconcile([b.lease])
    nhid = nexthop_id(IPv4Network("10.244.2.0/24"))
    assert our_nexthops(a.host) == [(nhid, "10.244.2.0", "flannel.1")]
    route = a.host.run("ip", "route", "show", "10.244.2.0/24").stdout
    assert f"nhid {nhid} via 10.244.2.0 dev flannel.1" in route and "onlink" in route
    assert a.rec.reconcile([b.lease]).changes == 0  # what the kernel reads back is what we wrote


def test_a_deleted_nexthop_object_and_its_route_are_restored(nodes, netns_factory):
    a, b = nodes
    pod_a = peered_with_pods(a, b, netns_factory)
    nhid = nexthop_id(IPv4Network("10.244.2.0/24"))
    a.host.run("ip", "nexthop", "del", "id", str(nhid))  # takes the route with it
    assert kernel_state(a.host)["route"] == []
    result = a.rec.reconcile([b.lease])
    assert result.errors == 0 and result.changes == 1  # the route, written with its nexthop
    assert our_nexthops(a.host) == [(nhid, "10.244.2.0", "flannel.1")]
    assert ping(pod_a, "10.244.2.2")


def test_a_foreign_nexthop_with_our_id_makes_the_peer_a_conflict_and_stays(nodes):
    a, b = nodes
    nhid = nexthop_id(IPv4Network("10.244.2.0/24"))
    a.host.run("ip", "nexthop", "add", "id", str(nhid), "via", "198.18.0.254", "dev", "eth0")
    result = a.rec.reconcile([b.lease])
    assert result.skipped == 1
    assert f"nexthop id {nhid}" in a.rec.skipped[b.lease.key].reason
    assert kernel_state(a.host) == {"neigh": [], "fdb": [], "route": []}  # nothing of the peer
    foreign = a.host.run("ip", "nexthop", "show", "id", str(nhid)).stdout
    assert "via 198.18.0.254 dev eth0" in foreign  # untouched


def test_a_foreign_nexthop_that_appears_after_the_pass_blocks_an_event_and_stays(nodes):
    """The last pass saw no foreign nexthop; one takes the id before the lease event.
    The exclusive create fails, the route that went in through it in the same
    datagram is deleted again, and nothing of the peer stays (only the foreign one)."""
    a, b = nodes
    a.rec.reconcile([])
    nhid = nexthop_id(IPv4Network("10.244.2.0/24"))
    a.host.run("ip", "nexthop", "add", "id", str(nhid), "via", "198.18.0.254", "dev", "eth0")
    result = a.rec.apply_peers([b.lease.key], lambda _k: b.lease)
    assert result.needs_full  # a conflict on a new peer: the full pass decides
    assert kernel_state(a.host) == {"neigh": [], "fdb": [], "route": []}
    assert "10.244.2.0/24" not in a.host.run("ip", "route").stdout
    assert a.rec.reconcile([b.lease]).skipped == 1
    assert f"nexthop id {nhid}" in a.rec.skipped[b.lease.key].reason
    assert kernel_state(a.host) == {"neigh": [], "fdb": [], "route": []}
    foreign = a.host.run("ip", "nexthop", "show", "id", str(nhid)).stdout
    assert "via 198.18.0.254 dev eth0" in foreign


def test_our_nexthop_left_without_its_route_is_rewritten_with_it(nodes):
    a, b = nodes
    a.rec.reconcile([b.lease])
    a.host.run("ip", "route", "del", "10.244.2.0/24", "proto", "70")  # the nexthop stays
    result = a.rec.reconcile([b.lease])
    assert result.errors == 0 and result.skipped == 0
    nhid = nexthop_id(IPv4Network("10.244.2.0/24"))
    assert f"nhid {nhid}" in a.host.run("ip", "route", "show", "10.244.2.0/24").stdout


def test_our_plain_route_from_before_is_moved_onto_a_nexthop_in_place(nodes):
    """An older flannelish (or one on a kernel without nexthops) wrote plain routes."""
    a, b = nodes
    a.host.run("ip", "route", "add", "10.244.2.0/24", "via", "10.244.2.0", "dev", "flannel.1",
               "onlink", "proto", "70")  # fmt: skip
    result = a.rec.reconcile([b.lease])
    assert result.errors == 0
    nhid = nexthop_id(IPv4Network("10.244.2.0/24"))
    assert f"nhid {nhid}" in a.host.run("ip", "route", "show", "10.244.2.0/24").stdout


def test_deleted_device_is_rebuilt_and_traffic_resumes(nodes, netns_factory):
    a, b = nodes
    pod_a = peered_with_pods(a, b, netns_factory)
    mac = a.backend.mac
    a.host.run("ip", "link", "del", "flannel.1")
    result = a.rec.reconcile([b.lease])
    assert result.rebuilt and result.errors == 0
    assert link_details(a.host, "flannel.1")["address"] == mac
    assert ping(pod_a, "10.244.2.2")


def test_foreign_route_in_the_pod_network_is_left_alone(nodes):
    a, b = nodes
    a.host.run("ip", "route", "add", "10.244.77.0/24", "via", "198.18.0.254")
    a.rec.reconcile([b.lease])
    a.rec.reconcile([])
    assert "10.244.77.0/24" in a.host.run("ip", "route").stdout


def test_stale_mac_fdb_entry_removed_when_peer_mac_changes(nodes):
    a, b = nodes
    a.rec.reconcile([b.lease])
    new_attrs = b.lease.attrs.__class__(
        IPv4Address("198.18.0.2"), "vxlan", {"VNI": 1, "VtepMAC": "0e:aa:bb:cc:dd:ee"}
    )
    a.rec.reconcile([Lease(b.lease.subnet, new_attrs)])
    state = kernel_state(a.host)
    assert state["fdb"] == [("0e:aa:bb:cc:dd:ee", "198.18.0.2")]
    assert state["neigh"] == [("10.244.2.0", "0e:aa:bb:cc:dd:ee")]
