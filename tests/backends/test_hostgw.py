"""host-gw backend against the fake kernel, driven by the real reconciler."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from flannelish.backends import get_backend_class
from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.hostgw import WARN_INTERVAL, HostGwBackend

from flannelish.daemon.reconciler import Reconciler
from flannelish.errors import ConfigError
from flannelish.kernel.netlink import ROUTE_PROTO, Addr, Route
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit

NET = SimpleNamespace(network=IPv4Network("10.244.0.0/16"), backend={"Type": "host-gw"})


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, public_ip: str = "198.18.0.1", clock=None, nexthops=False):
    nl = FakeNetlink(nexthop_support=nexthops)
    eth0 = nl.add_link("eth0", mtu=9000)
    nl.add_addr(Addr(eth0.index, IPv4Address("198.18.0.1"), 24))
    ext = ExternalInterface(
        "eth0", eth0.index, IPv4Address("198.18.0.1"), IPv4Address(public_ip), 9000
    )
    backend = HostGwBackend(BackendContext(nl, ext, NET, tmp_path), clock=clock or Clock())
    return nl, eth0, backend


def peer(n: int, ip: str, backend_type: str = "host-gw") -> Lease:
    return Lease(IPv4Network(f"10.244.{n}.0/24"), LeaseAttrs(IPv4Address(ip), backend_type))


def test_registry_knows_host_gw():
    assert get_backend_class("host-gw") is HostGwBackend


def test_mtu_is_the_interface_mtu_and_lease_has_no_backend_data(tmp_path):
    _, _, backend = make(tmp_path)
    backend.setup()
    assert backend.mtu == 9000
    assert backend.lease_attrs().to_json() == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"host-gw"}'
    )


def test_nat_public_ip_is_refused(tmp_path):
    _, _, backend = make(tmp_path, public_ip="203.0.113.7")
    with pytest.raises(ConfigError, match="NAT"):
        backend.setup()


def test_routes_via_public_ip_with_our_protocol_and_removal(tmp_path):
    nl, eth0, backend = make(tmp_path)
    backend.setup()
    rec = Reconciler([backend])
    peers = [peer(2, "198.18.0.2"), peer(3, "198.18.0.3")]
    result = rec.reconcile(peers)
    assert result.errors == 0 and result.changes == 2
    want = {
        Route(IPv4Network("10.244.2.0/24"), IPv4Address("198.18.0.2"), eth0.index),
        Route(IPv4Network("10.244.3.0/24"), IPv4Address("198.18.0.3"), eth0.index),
    }
    assert set(nl.routes()) == want
    assert all(r.proto == ROUTE_PROTO for r in nl.routes())
    assert rec.reconcile(peers).changes == 0  # converged
    # changed PublicIP is replaced in place; a removed peer's route goes
    rec.reconcile([peer(2, "198.18.0.22")])
    assert set(nl.routes()) == {
        Route(IPv4Network("10.244.2.0/24"), IPv4Address("198.18.0.22"), eth0.index)
    }


def test_routes_stay_plain_where_the_kernel_has_nexthop_objects(tmp_path):
    """flanneld keeps a host-gw route identical to its own after switching back, and
    later deletes it by gateway, which a route through a nexthop would refuse
    (docs/performance.md): host-gw routes never use one."""
    nl, eth0, backend = make(tmp_path, nexthops=True)
    backend.setup()
    rec = Reconciler([backend])
    assert rec.reconcile([peer(2, "198.18.0.2")]).errors == 0
    net = IPv4Network("10.244.2.0/24")
    assert nl.routes() == [Route(net, IPv4Address("198.18.0.2"), eth0.index)]
    assert nl.nexthops() == []


def test_foreign_routes_are_never_touched(tmp_path):
    nl, eth0, backend = make(tmp_path)
    backend.setup()
    foreign = Route(IPv4Network("10.244.9.0/24"), IPv4Address("198.18.0.9"), eth0.index, proto=4)
    nl.add_foreign_route(foreign)
    Reconciler([backend]).reconcile([])
    assert foreign in nl.routes(proto=4)


def test_off_link_peer_gets_no_route_and_a_repeated_warning(tmp_path, caplog):
    clock = Clock()
    nl, _, backend = make(tmp_path, clock=clock)
    backend.setup()
    rec = Reconciler([backend])
    far = peer(5, "198.19.7.7")
    caplog.set_level(logging.WARNING, logger="flannelish.hostgw")
    result = rec.reconcile([far, peer(2, "198.18.0.2")])
    assert result.skipped == 1
    assert [r.dst for r in nl.routes()] == [IPv4Network("10.244.2.0/24")]
    warnings = [r.getMessage() for r in caplog.records if r.name == "flannelish.hostgw"]
    assert warnings == [
        "peer 10.244.5.0/24 gets no route: PublicIP 198.19.7.7 is not on-link on eth0: "
        "host-gw needs all nodes on one L2 segment"
    ]
    rec.reconcile([far])
    assert len([r for r in caplog.records if r.name == "flannelish.hostgw"]) == 1  # rate-limited
    clock.now += WARN_INTERVAL
    rec.reconcile([far])
    assert len([r for r in caplog.records if r.name == "flannelish.hostgw"]) == 2  # repeated


def test_peer_that_moves_off_link_loses_its_route(tmp_path):
    nl, _, backend = make(tmp_path)
    backend.setup()
    rec = Reconciler([backend])
    rec.reconcile([peer(2, "198.18.0.2")])
    rec.reconcile([peer(2, "198.19.0.2")])
    assert nl.routes() == []


def test_vxlan_peers_are_skipped(tmp_path):
    nl, _, backend = make(tmp_path)
    backend.setup()
    assert Reconciler([backend]).reconcile([peer(2, "198.18.0.2", "vxlan")]).skipped == 1
    assert nl.routes() == []
