"""host-gw in dual-stack and IPv6-only networks: routes via PublicIPv6 (fake kernel)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import SimpleNamespace

import pytest
from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.hostgw import HostGwBackend

from flannelish.daemon.reconciler import Reconciler
from flannelish.kernel.netlink import AF_INET6, Addr, Route
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit


def backend(tmp_path, ipv4: bool = True):
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0")
    nl.add_addr(Addr(eth0.index, IPv4Address("198.18.0.1"), 24))
    nl.add_addr(Addr(eth0.index, IPv6Address("fd18::1"), 64))
    v4 = IPv4Address("198.18.0.1" if ipv4 else "0.0.0.0")
    ext = ExternalInterface("eth0", eth0.index, v4, v4, 1500, *(2 * [IPv6Address("fd18::1")]))
    net = SimpleNamespace(enable_ipv4=ipv4, enable_ipv6=True, backend={"Type": "host-gw"})
    be = HostGwBackend(BackendContext(nl, ext, net, tmp_path))
    be.setup()
    return nl, eth0, be


def peer(n: int, ipv4: bool = True, v6: str | None = None) -> Lease:
    attrs = LeaseAttrs(
        IPv4Address(f"198.18.0.{n}" if ipv4 else "0.0.0.0"),
        "host-gw",
        public_ipv6=IPv6Address(v6 or f"fd18::{n:x}"),
    )
    v4 = IPv4Network(f"10.244.{n}.0/24" if ipv4 else "0.0.0.0/0")
    return Lease(v4, attrs, ipv6_subnet=IPv6Network(f"fd44:0:0:{n:x}::/64"))


def test_dual_stack_peer_gets_a_route_per_family(tmp_path):
    nl, eth0, be = backend(tmp_path)
    assert be.lease_attrs().public_ipv6 == IPv6Address("fd18::1")
    Reconciler([be]).reconcile([peer(2)])
    assert {(r.dst, r.gateway) for r in nl.routes(family=0)} == {
        (IPv4Network("10.244.2.0/24"), IPv4Address("198.18.0.2")),
        (IPv6Network("fd44:0:0:2::/64"), IPv6Address("fd18::2")),
    }
    assert nl.routes(family=AF_INET6)[0] == Route(
        IPv6Network("fd44:0:0:2::/64"), IPv6Address("fd18::2"), eth0.index, priority=1024
    )


def test_ipv6_only_peer_and_an_off_link_one(tmp_path):
    _, _, be = backend(tmp_path, ipv4=False)
    assert [r.dst for r in be.plan(peer(2, ipv4=False))] == [IPv6Network("fd44:0:0:2::/64")]
    skip = be.plan(peer(3, ipv4=False, v6="fd19::3"))
    assert skip.kind == "off-link" and "PublicIPv6 fd19::3" in skip.reason
