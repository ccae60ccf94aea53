"""The VXLAN backend in dual-stack and IPv6-only networks (fake kernel, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.vxlan import VxlanBackend

from flannelish.daemon.reconciler import Reconciler
from flannelish.kernel.netlink import AF_INET6, Addr, Fdb, Neigh, Nexthop, Route, nexthop_id
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit

NET4 = IPv4Network("10.244.0.0/16")
NET6 = IPv6Network("fd44::/48")
OWN4, OWN6 = IPv4Network("10.244.1.0/24"), IPv6Network("fd44:0:0:1::/64")
NO_V4 = IPv4Network("0.0.0.0/0")


def kernel(tmp_path: Path, ipv4: bool = True, mtu: int = 1500, nexthops: bool = False):
    nl = FakeNetlink(nexthop_support=nexthops)
    eth0 = nl.add_link("eth0", mtu=mtu)
    v4 = IPv4Address("198.18.0.1") if ipv4 else IPv4Address("0.0.0.0")
    ext = ExternalInterface(
        "eth0", eth0.index, v4, v4, mtu, IPv6Address("fd18::1"), IPv6Address("fd18::1")
    )
    net = SimpleNamespace(
        network=NET4 if ipv4 else None,
        ipv6_network=NET6,
        enable_ipv4=ipv4,
        enable_ipv6=True,
        backend={"Type": "vxlan"},
    )
    be = VxlanBackend(BackendContext(nl, ext, net, tmp_path))
    be.setup()
    be.bind_lease(Lease(OWN4 if ipv4 else NO_V4, be.lease_attrs(), ipv6_subnet=OWN6))
    return SimpleNamespace(nl=nl, backend=be, rec=Reconciler([be]))


def peer(n: int, ipv4: bool = True) -> Lease:
    attrs = LeaseAttrs(
        IPv4Address(f"198.18.0.{n}") if ipv4 else IPv4Address("0.0.0.0"),
        "vxlan",
        {"VNI": 1, "VtepMAC": f"0e:00:00:00:04:{n:02x}"} if ipv4 else None,
        IPv6Address(f"fd18::{n:x}"),
        {"VNI": 1, "VtepMAC": f"0e:00:00:00:06:{n:02x}"},
    )
    v4 = IPv4Network(f"10.244.{n}.0/24") if ipv4 else NO_V4
    return Lease(v4, attrs, ipv6_subnet=IPv6Network(f"fd44:0:0:{n:x}::/64"))


def test_dual_stack_builds_two_devices_with_their_own_mtu_mac_and_local(tmp_path):
    k = kernel(tmp_path)
    v4, v6 = k.nl.link("flannel.1"), k.nl.link("flannel-v6.1")
    assert v4 is not None and v6 is not None and v4.mac != v6.mac
    assert (v4.mtu, v6.mtu) == (1450, 1430)  # -50 over IPv4, -70 over IPv6 (Flannel: -50)
    assert k.backend.mtu == 1430  # FLANNEL_MTU: the smaller one
    assert v6.vxlan.local == IPv6Address("fd18::1") and v4.vxlan.local == IPv4Address("198.18.0.1")
    assert Addr(v6.index, IPv6Address("fd44:0:0:1::"), 128) in k.nl.addrs(v6.index, AF_INET6)
    attrs = k.backend.lease_attrs()
    assert attrs.public_ipv6 == IPv6Address("fd18::1")
    assert attrs.backend_v6_data == {"VNI": 1, "VtepMAC": v6.mac}
    assert (tmp_path / "flannel-v6.1.vtep-mac").read_text().strip() == v6.mac


def test_dual_stack_peer_gets_entries_on_both_devices(tmp_path):
    k = kernel(tmp_path)
    i4, i6 = k.backend.index, k.backend.index6
    k.rec.reconcile([peer(2)])
    gw6 = IPv6Address("fd44:0:0:2::")
    assert k.nl.neighs(i6) == [Neigh(i6, gw6, "0e:00:00:00:06:02")]
    assert k.nl.fdbs(i6) == [Fdb(i6, "0e:00:00:00:06:02", IPv6Address("fd18::2"))]
    assert k.nl.fdbs(i4) == [Fdb(i4, "0e:00:00:00:04:02", IPv4Address("198.18.0.2"))]
    routes = {r.dst: r for r in k.nl.routes(family=0)}
    assert routes[IPv6Network("fd44:0:0:2::/64")] == Route(
        IPv6Network("fd44:0:0:2::/64"), gw6, i6, onlink=True, priority=1024
    )
    assert IPv4Network("10.244.2.0/24") in routes


def test_only_the_ipv4_route_of_a_dual_stack_peer_uses_a_nexthop_object(tmp_path):
    """The IPv6 FIB keeps one entry per route (no shared gateway search): plain there."""
    k = kernel(tmp_path, nexthops=True)
    i4, i6 = k.backend.index, k.backend.index6
    assert k.rec.reconcile([peer(2)]).errors == 0
    net4, gw4 = IPv4Network("10.244.2.0/24"), IPv4Address("10.244.2.0")
    assert k.nl.nexthops() == [Nexthop(nexthop_id(net4), gw4, i4, onlink=True)]
    routes = {r.dst: r for r in k.nl.routes(family=0)}
    assert routes[net4] == Route(net4, gw4, i4, onlink=True, nexthop=True)
    assert not routes[IPv6Network("fd44:0:0:2::/64")].nexthop
    assert routes[IPv6Network("fd44:0:0:2::/64")].oif == i6


def test_deleted_ipv6_entries_are_repaired_by_the_full_pass(tmp_path):
    k = kernel(tmp_path)
    k.rec.reconcile([peer(2)])
    i6 = k.backend.index6
    k.nl.del_neigh(k.nl.neighs(i6)[0])
    k.nl.del_fdb(k.nl.fdbs(i6)[0])
    k.nl.del_route(next(r for r in k.nl.routes(family=0) if r.dst.version == 6))
    result = k.rec.reconcile([peer(2)])
    assert result.changes == 3
    assert len(k.nl.neighs(i6)) == 1 and len(k.nl.fdbs(i6)) == 1


def test_removed_peer_loses_its_ipv6_entries_by_event(tmp_path):
    k = kernel(tmp_path)
    k.rec.reconcile([peer(2), peer(3)])
    leases = {p.key: p for p in (peer(2), peer(3))}
    gone = peer(3).key
    del leases[gone]
    k.rec.apply_peers([gone], leases.get)
    i6 = k.backend.index6
    assert [n.ip for n in k.nl.neighs(i6)] == [IPv6Address("fd44:0:0:2::")]
    assert IPv6Network("fd44:0:0:3::/64") not in {r.dst for r in k.nl.routes(family=0)}


def test_ipv6_only_has_no_ipv4_device_and_programs_ipv6_peers(tmp_path):
    k = kernel(tmp_path, ipv4=False)
    assert k.nl.link("flannel.1") is None and k.backend.name == "flannel-v6.1"
    attrs = k.backend.lease_attrs()
    assert attrs.public_ip == IPv4Address("0.0.0.0") and attrs.backend_data is None
    k.rec.reconcile([peer(2, ipv4=False)])
    assert [r.dst for r in k.nl.routes(family=0)] == [IPv6Network("fd44:0:0:2::/64")]


def test_ipv6_peer_without_v6_mac_or_with_our_address_is_skipped(tmp_path):
    k = kernel(tmp_path)
    bad = peer(2)
    a = bad.attrs
    no_mac = Lease(
        bad.subnet,
        LeaseAttrs(a.public_ip, "vxlan", a.backend_data, a.public_ipv6, None),
        ipv6_subnet=bad.ipv6_subnet,
    )
    assert k.backend.validate(no_mac).kind == "vtep-mac"
    ours = Lease(
        bad.subnet,
        LeaseAttrs(a.public_ip, "vxlan", a.backend_data, IPv6Address("fd18::1"), a.backend_v6_data),
        ipv6_subnet=bad.ipv6_subnet,
    )
    assert k.backend.validate(ours).kind == "public-ip"
    assert k.backend.claims(peer(2)) == (
        ("vtep-mac", "0e:00:00:00:04:02"),
        ("vtep-mac-v6", "0e:00:00:00:06:02"),
    )


def test_direct_routing_for_an_on_link_ipv6_peer(tmp_path):
    k = kernel(tmp_path)
    nl = k.nl
    nl.add_addr(Addr(k.backend.ctx.ext.index, IPv6Address("fd18::1"), 64))
    k.backend.reconfigure(SimpleNamespace(backend={"Type": "vxlan", "DirectRouting": True}))
    planned = k.backend.plan(peer(2))
    assert Route(
        IPv6Network("fd44:0:0:2::/64"), IPv6Address("fd18::2"), k.backend.ctx.ext.index,
        priority=1024,
    ) in planned  # fmt: skip
