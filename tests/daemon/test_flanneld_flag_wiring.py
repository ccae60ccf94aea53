"""flanneld's flags reach the right place (fake kernel and fake nft, no root):
--iface-can-reach picks the interface and source of the route, --iptables-resync is the
nftables loop's interval, --iptables-forward-rules / --ip-masq-fully-random-disable
shape the table, --net-config-path seeds an empty etcd, --ip-blackhole-route."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest

from flannelish.daemon.flanneld_flags import seed_config
from flannelish.daemon.iface import select_interface
from flannelish.daemon.node import DaemonOptions, NodeDaemon
from flannelish.errors import ConfigError
from flannelish.kernel.netlink import Addr, Route
from flannelish.node.ops import NodeOps, NodeOpsOptions
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.fake_kernel import FakeNetlink
from flannelish.testing.nft import FakeNft
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit


@pytest.fixture
def nl():
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    eth1 = nl.add_link("eth1", mtu=9000)
    nl.add_addr(Addr(eth0.index, IPv4Address("198.18.0.1"), 24))
    nl.add_addr(Addr(eth1.index, IPv4Address("172.31.0.5"), 24))
    nl.add_addr(Addr(eth1.index, IPv4Address("172.31.0.6"), 24))
    nl.default_oif = eth0.index
    nl.add_foreign_route(Route(IPv4Network("172.31.0.0/24"), None, eth1.index, proto=2))
    return nl


def test_iface_can_reach_uses_the_route_to_that_address(nl, monkeypatch):
    monkeypatch.setattr(nl, "route_lookup", lambda ip: (nl.link("eth1").index,
                                                        IPv4Address("172.31.0.6")))  # fmt: skip
    ext = select_interface(nl, can_reach="172.31.0.99")
    assert (ext.name, str(ext.address), str(ext.public_ip)) == ("eth1", "172.31.0.6", "172.31.0.6")
    # --iface wins over it (tried first), as in flanneld.
    assert select_interface(nl, ["eth0"], can_reach="172.31.0.99").name == "eth0"


def test_iface_can_reach_without_source_takes_the_interface_address(nl):
    nl.del_addr(Addr(nl.link("eth1").index, IPv4Address("172.31.0.6"), 24))
    ext = select_interface(nl, can_reach="172.31.0.99")
    assert ext.name == "eth1" and str(ext.address) == "172.31.0.5"


@pytest.mark.parametrize("target", ["not-an-ip", "fd00::1/64", "10.0.0.1/24"])
def test_iface_can_reach_needs_an_ip_address(nl, target):
    with pytest.raises(ConfigError, match="must be an IPv4 or IPv6 address"):
        select_interface(nl, can_reach=target)


def test_iface_can_reach_with_no_route_is_a_config_error(nl):
    nl.default_oif = None
    with pytest.raises(ConfigError, match=r"no route to --iface-can-reach 203\.0\.113\.1"):
        select_interface(nl, can_reach="203.0.113.1")


def test_forward_rules_and_fully_random_reach_the_nft_table():
    lease = Lease(IPv4Network("10.244.5.0/24"), LeaseAttrs(IPv4Address("198.18.0.1"), "vxlan"))
    runner = FakeNft()
    opts = NodeOpsOptions(ip_masq=True, forward=False, fully_random=False)
    ops = NodeOps(opts, runner=runner)
    [owner] = ops.start("10.244.0.0/16", lease, vxlan_port=8472)
    chains = {rule.chain for rule in owner.rules.rules()}
    bodies = " ".join(rule.body for rule in owner.rules.rules())
    assert "forward" not in chains and "postrouting" in chains
    assert "masquerade" in bodies and "fully-random" not in bodies
    # A lease that moves keeps both settings.
    ops.lease_changed(Lease(IPv4Network("10.244.6.0/24"), lease.attrs))
    assert owner.rules.forward is False and owner.rules.fully_random is False
    ops.stop()


def test_iptables_resync_is_the_interval_of_the_nftables_loop():
    node = NodeDaemon(DaemonOptions(etcd=None, resync_seconds=10, firewall_resync_seconds=1.5))
    node.backend = SimpleNamespace()
    backend_loop = node._make_loop(node.backend, lambda r: None)
    nft_loop = node._make_loop(SimpleNamespace(), lambda r: None)
    assert backend_loop.interval == 10 and nft_loop.interval == 1.5


def test_net_config_path_seeds_an_empty_etcd_only(tmp_path):
    registry = InMemoryRegistry()
    manager = SimpleNamespace(registry=registry)
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}))
    seed_config(manager.registry, path)
    assert json.loads(registry.get_config())["Network"] == "10.244.0.0/16"
    path.write_text(json.dumps({"Network": "10.99.0.0/16"}))
    seed_config(manager.registry, path)  # etcd has one now: it wins
    assert json.loads(registry.get_config())["Network"] == "10.244.0.0/16"
    path.write_text('{"Network": "nonsense"}')
    with pytest.raises(ConfigError, match="invalid network config in"):
        seed_config(manager.registry, path)
    with pytest.raises(ConfigError, match="cannot read --net-config-path"):
        seed_config(manager.registry, tmp_path / "missing.json")


def test_blackhole_route_for_our_subnet_follows_the_lease(nl):
    node = NodeDaemon(DaemonOptions(etcd=None, blackhole_route=True), netlink=nl)
    old = Lease(IPv4Network("10.244.5.0/24"), LeaseAttrs(IPv4Address("198.18.0.1"), "vxlan"))
    node.status.lease = old
    node._ensure_blackhole()
    assert nl.blackholes == {old.subnet}
    node.status.lease = Lease(IPv4Network("10.244.6.0/24"), old.attrs)
    node._ensure_blackhole(old)
    assert nl.blackholes == {IPv4Network("10.244.6.0/24")}
    off = NodeDaemon(DaemonOptions(etcd=None), netlink=FakeNetlink())
    off.status.lease = old
    off._ensure_blackhole()
    assert off._netlink.blackholes == set()
