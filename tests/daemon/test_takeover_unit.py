"""The takeover of flanneld's peer entries by the reconciler (fake kernel, no root).

flanneld leaves per peer a neighbour and FDB entry on flannel.<VNI> and a route
without our protocol (docs/flannel-compat.md §7).  The route that is ours except
for its protocol is replaced in place, on the full pass and on the per-event
path; any other foreign route stays a "conflict".
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest
from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.vxlan import VxlanBackend

from flannelish.daemon.reconciler import Reconciler
from flannelish.kernel.netlink import ROUTE_PROTO, Fdb, Neigh, Route, replace
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit

NETWORK = IPv4Network("10.244.0.0/16")


def peer(n: int) -> Lease:
    return Lease(
        IPv4Network(f"10.244.{n}.0/24"),
        LeaseAttrs(IPv4Address(f"198.18.0.{n}"), "vxlan",
                   {"VNI": 1, "VtepMAC": f"0e:00:00:00:00:{n:02x}"}),
    )  # fmt: skip


@pytest.fixture
def kernel(tmp_path):
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    ip = IPv4Address("198.18.0.1")
    ext = ExternalInterface("eth0", eth0.index, ip, ip, 1500)
    net = SimpleNamespace(network=NETWORK, backend={"Type": "vxlan"})
    backend = VxlanBackend(BackendContext(nl, ext, net, tmp_path))
    backend.setup()
    backend.bind_lease(Lease(IPv4Network("10.244.1.0/24"), backend.lease_attrs()))
    return SimpleNamespace(nl=nl, backend=backend, rec=Reconciler([backend]))


def entries(k):
    idx = k.backend.index
    return (
        sorted((str(n.ip), n.mac) for n in k.nl.neighs(idx)),
        sorted((f.mac, str(f.dst)) for f in k.nl.fdbs(idx)),
        sorted((str(r.dst), str(r.gateway), r.proto) for r in k.nl._routes.values()),
    )


BOOT = 3  # what flanneld's routes carry (netlink's default protocol)


def flanneld_state(k, *ns: int) -> list[Route]:
    """The entries flanneld leaves for peers 10.244.<n>.0/24."""
    idx = k.backend.index
    routes = []
    for n in ns:
        p = peer(n)
        gw = p.subnet.network_address
        k.nl.replace_neigh(Neigh(idx, gw, p.attrs.vtep_mac))
        k.nl.replace_fdb(Fdb(idx, p.attrs.vtep_mac, p.attrs.public_ip))
        route = Route(p.subnet, gw, idx, onlink=True, proto=BOOT)
        k.nl.add_foreign_route(route)
        routes.append(route)
    k.nl.calls.clear()
    return routes


def test_full_pass_takes_over_flanneld_s_routes_in_place(kernel):
    before = entries(kernel)
    flanneld_state(kernel, 2, 3)
    result = kernel.rec.reconcile([peer(2), peer(3)])
    assert result.errors == 0 and not kernel.rec.skipped
    # Neighbour and FDB entries were already right: untouched. Each route: one
    # exclusive add refused (both adds in one batch), then one replace of that very slot.
    calls = kernel.nl.calls
    assert [op for op, _ in calls] == ["add_route", "add_route", "replace_route", "replace_route"]
    assert [r.dst for _, r in calls[:2]] == [r.dst for _, r in calls[2:]]
    assert all(r.proto == ROUTE_PROTO for r in kernel.nl._routes.values())
    assert len(kernel.nl._routes) == 2 and before != entries(kernel)
    kernel.nl.calls.clear()
    assert kernel.rec.reconcile([peer(2), peer(3)]).changes == 0


def test_the_per_event_path_takes_over_too(kernel):
    flanneld_state(kernel, 2)
    peers = {peer(2).subnet: peer(2)}
    kernel.rec.reconcile([])  # start-up pass before the peer is known
    kernel.rec.apply_peers([peer(2).subnet], peers.get)
    assert not kernel.rec.skipped
    assert kernel.nl._routes[peer(2).subnet].proto == ROUTE_PROTO


@pytest.mark.parametrize(
    "change",
    [
        {"gateway": IPv4Address("198.18.0.254")},
        {"oif": 1},
        {"onlink": False},
    ],
)
def test_a_route_that_differs_in_more_than_its_protocol_stays_a_conflict(kernel, change):
    [route] = flanneld_state(kernel, 2)
    other = replace(route, **change)
    kernel.nl._routes[route.dst] = other
    kernel.rec.reconcile([peer(2)])
    assert kernel.nl._routes[route.dst] == other
    assert kernel.rec.skipped[LeaseKey(route.dst)].kind == "conflict"


def test_stale_flanneld_neighbour_and_fdb_entries_are_removed(kernel):
    flanneld_state(kernel, 2, 9)  # 9 left etcd while flanneld was down
    kernel.rec.reconcile([peer(2)])
    neighs, fdbs, _ = entries(kernel)
    assert neighs == [("10.244.2.0", "0e:00:00:00:00:02")]
    assert fdbs == [("0e:00:00:00:00:02", "198.18.0.2")]
    # flanneld's route for 9 is foreign and not ours to delete (doctor names it).
    assert kernel.nl._routes[IPv4Network("10.244.9.0/24")].proto == BOOT


def test_an_incompatible_device_of_our_vni_is_rebuilt_with_its_mac(tmp_path):
    """flanneld behind NAT gives flannel.1 local = PublicIP; we use the interface address,
    so the device is rebuilt, but with the MAC peers know (no saved MAC yet)."""
    from flannelish.kernel.netlink import VxlanSpec

    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    nl.create_vxlan(VxlanSpec("flannel.1", 1, IPv4Address("203.0.113.7"), eth0.index, 8472,
                              "5a:1e:0d:00:00:07", 1450))  # fmt: skip
    ip = IPv4Address("198.18.0.1")
    ext = ExternalInterface("eth0", eth0.index, ip, IPv4Address("203.0.113.7"), 1500)
    net = SimpleNamespace(network=NETWORK, backend={"Type": "vxlan"})
    backend = VxlanBackend(BackendContext(nl, ext, net, tmp_path))
    backend.setup()
    link = nl.link("flannel.1")
    assert link.vxlan.local == ip and link.mac == "5a:1e:0d:00:00:07"
    assert backend.lease_attrs().backend_data["VtepMAC"] == "5a:1e:0d:00:00:07"
