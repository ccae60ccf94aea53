"""IPv6 in the daemon's nftables: table ip6 flannelish beside table ip flannelish.

Masquerade with the never-pod-to-pod rule and the VXLAN anti-spoof set of the
peers' PublicIPv6, driven through FakeNft (one table per family).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

from flannelish.node.firewall import NftRules
from flannelish.node.firewall_owner import NftOwner
from flannelish.node.teardown import teardown
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.fake_kernel import FakeNetlink
from flannelish.testing.nft import FakeNft

from .test_firewall import labels

pytestmark = pytest.mark.unit

V6 = {"network6": "fd44::/48", "subnet6": "fd44:0:0:3::/64"}


def rules(dual: bool = True, **kwargs: Any) -> tuple[NftRules, FakeNft]:
    fake = FakeNft()
    v4 = {"network": "10.244.0.0/16", "subnet": "10.244.3.0/24"} if dual else {}
    args = {"network": None, "subnet": None, **v4, **V6, "masq": True, **kwargs}
    return NftRules(runner=fake, **args), fake


def _lease(n: int, ip: str | None, ip6: str | None) -> Lease:
    attrs = LeaseAttrs(
        IPv4Address(ip or "0.0.0.0"), "vxlan", None, IPv6Address(ip6) if ip6 else None
    )
    subnet = IPv4Network(f"10.244.{n}.0/24") if ip else IPv4Network("0.0.0.0/0")  # 0/0: no IPv4
    return Lease(subnet, attrs, ipv6_subnet=IPv6Network(f"fd44:0:0:{n:x}::/64"))


def test_ipv6_masquerade_mirrors_ipv4_and_never_nats_inside_the_pod_network():
    nft, _ = rules()
    v6 = [r.body for r in nft.rules() if r.family == "ip6" and r.chain == "postrouting"]
    assert v6 == [
        "meta mark & 0x4000 == 0x4000 return",
        "ip6 saddr fd44:0:0:3::/64 ip6 daddr fd44::/48 return",
        "ip6 saddr fd44::/48 ip6 daddr fd44:0:0:3::/64 return",
        "ip6 saddr != fd44::/48 ip6 daddr fd44:0:0:3::/64 return",
        "ip6 saddr fd44::/48 ip6 daddr != ff00::/8 masquerade fully-random",
        "ip6 saddr != fd44::/48 ip6 daddr fd44::/48 masquerade fully-random",
    ]
    v4 = [r.body for r in nft.rules() if r.family == "ip" and r.chain == "postrouting"]
    assert len(v4) == 6 and all(" ip6 " not in body for body in v4)
    fwd = [r.body for r in nft.rules() if r.family == "ip6" and r.chain == "forward"]
    assert fwd == ["ip6 saddr fd44::/48 accept", "ip6 daddr fd44::/48 accept"]


def test_both_tables_are_written_in_one_transaction_and_read_back_as_present():
    nft, fake = rules()
    nft.set_peers(["198.18.0.2", "fd18::2"])
    nft.apply()
    assert fake.tables["ip"]["set"] == {IPv4Address("198.18.0.2")}
    assert fake.tables["ip6"]["set"] == {IPv6Address("fd18::2")}
    script = fake.scripts[-1]
    assert "add set ip6 flannelish vxlan_peers { type ipv6_addr; }" in script
    assert "udp dport 8472 ip6 saddr != @vxlan_peers counter drop" in script
    assert nft.present()
    assert labels(fake.tables["ip6"]["chains"]["input"]) == ["anti-spoof: vxlan from non-peers"]
    fake.tables["ip6"] = None  # deleted by hand
    assert not nft.present() and nft.ensure()
    assert fake.tables["ip6"]["set"] == {IPv6Address("fd18::2")}
    before = len(fake.scripts)
    nft.set_peers(["198.18.0.2", "fd18::3"])  # one element changed: one small transaction
    assert len(fake.scripts) == before + 1
    assert fake.scripts[-1].splitlines() == [
        "add element ip6 flannelish vxlan_peers { fd18::3 }",
        "delete element ip6 flannelish vxlan_peers { fd18::2 }",
    ]


def test_ipv6_only_has_no_ipv4_table():
    nft, fake = rules(dual=False)
    nft.apply()
    assert fake.tables.get("ip") is None and fake.tables["ip6"] is not None
    assert nft.families == ("ip6",)
    nft.set_peers(["fd18::2", "198.18.0.9"])  # no IPv4 table: the IPv4 address is ignored
    assert fake.tables["ip6"]["set"] == {IPv6Address("fd18::2")}
    nft.remove()
    assert fake.tables.get("ip6") is None


def test_owner_plans_both_underlay_addresses_and_arms_both_tables_after_a_synced_pass():
    from flannelish.daemon.reconciler import Reconciler

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    rec.reconcile([])
    assert "input" not in fake.tables["ip6"]["chains"]
    owner.arm()
    peers = [_lease(2, "198.18.0.2", "fd18::2"), _lease(3, "198.18.0.3", "fd18::3")]
    rec.reconcile(peers)
    assert fake.tables["ip6"]["set"] == {IPv6Address("fd18::2"), IPv6Address("fd18::3")}
    assert fake.tables["ip"]["set"] == {IPv4Address("198.18.0.2"), IPv4Address("198.18.0.3")}
    owner.after_pass()
    for fam in ("ip", "ip6"):
        assert labels(fake.tables[fam]["chains"]["input"]) == ["anti-spoof: vxlan from non-peers"]
    assert rec.reconcile(peers).changes == 0
    rec.reconcile(peers[:1])
    assert fake.tables["ip6"]["set"] == {IPv6Address("fd18::2")}

    # A restart adopts both armed tables: no window without the filter.
    restarted = NftOwner(rules()[0].__class__(runner=fake, network="10.244.0.0/16",
                                              subnet="10.244.3.0/24", masq=True, **V6))  # fmt: skip
    restarted.ensure_base()
    assert restarted.rules.armed
    assert fake.tables["ip6"]["set"] == {IPv6Address("fd18::2")}


def test_ipv6_only_peers_advertise_no_ipv4_underlay_address():
    owner = NftOwner(rules(dual=False)[0])
    (addr,) = owner.plan(_lease(4, None, "fd18::4"))
    assert addr.ip == IPv6Address("fd18::4")


def test_uninstall_removes_both_tables():
    nft, fake = rules()
    nft.apply()
    done = teardown(FakeNetlink(), fake)
    assert done.tables == ["ip flannelish", "ip6 flannelish"]
    assert fake.tables == {"ip": None, "ip6": None}


def test_node_ops_builds_the_ip6_table_from_the_lease_and_follows_a_moved_lease():
    from flannelish.daemon.reconciler import Reconciler
    from flannelish.node.ops import NodeOps, NodeOpsOptions

    fake = FakeNft()
    ops = NodeOps(NodeOpsOptions(ip_masq=True), runner=fake)
    own = _lease(1, "198.18.0.1", "fd18::1")
    owners = ops.start(IPv4Network("10.244.0.0/16"), own, vxlan_port=8472,
                       network6=IPv6Network("fd44::/48"))  # fmt: skip
    rec = Reconciler(owners)
    rec.reconcile([])
    before = list(fake.tables["ip6"]["chains"]["postrouting"])
    assert len(before) == 6
    ops.lease_changed(_lease(7, "198.18.0.1", "fd18::1"))  # both subnets moved
    rec.reconcile([])
    after = fake.tables["ip6"]["chains"]["postrouting"]
    assert labels(after) == labels(before) and after != before
    assert ops.owner is not None and ops.owner.rules.subnet6 == IPv6Network("fd44:0:0:7::/64")


def test_node_ops_on_an_ipv6_only_node_builds_only_the_ip6_table():
    from flannelish.daemon.reconciler import Reconciler
    from flannelish.node.ops import NodeOps, NodeOpsOptions

    fake = FakeNft()
    ops = NodeOps(NodeOpsOptions(ip_masq=True), runner=fake)
    own = _lease(2, None, "fd18::2")
    assert own.key.v4 is None
    owners = ops.start(None, own, vxlan_port=8472, network6=IPv6Network("fd44::/48"))
    assert len(owners) == 1
    Reconciler(owners).reconcile([])
    assert fake.tables.get("ip") is None and fake.tables.get("ip6")
    rules6 = labels(fake.tables["ip6"]["chains"]["postrouting"])
    assert len(rules6) == 6
    assert ops.owner is not None and ops.owner.rules.subnet6 == IPv6Network("fd44:0:0:2::/64")
    ops.lease_changed(_lease(9, None, "fd18::2"))
    assert ops.owner.rules.subnet6 == IPv6Network("fd44:0:0:9::/64")
    assert ops.owner.rules.network is None


def test_node_ops_with_no_family_to_guard_returns_no_owner():
    from flannelish.node.ops import NodeOps, NodeOpsOptions

    fake = FakeNft()
    ops = NodeOps(NodeOpsOptions(), runner=fake)
    # An IPv6-only lease, but the daemon passed no IPv6 network: nothing to build.
    assert ops.start("10.244.0.0/16", _lease(2, None, "fd18::2"), vxlan_port=8472) == []
    assert not any(fake.tables.values())
