"""NftRules logic against flannelish.testing.nft.FakeNft, which interprets what NftRules emits."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest

from flannelish.errors import ConfigError, KernelError
from flannelish.node.firewall import NftRules, parse_port, parse_table
from flannelish.testing.nft import FakeNft, copy_table

pytestmark = pytest.mark.unit


def labels(comments: list[str]) -> list[str]:
    return [c.rsplit(" #", 1)[0] for c in comments]


def rules(**kwargs: Any) -> tuple[NftRules, FakeNft]:
    fake = FakeNft()
    args = {"network": "10.244.0.0/16", "subnet": "10.244.3.0/24", "masq": True, **kwargs}
    return NftRules(runner=fake, **args), fake


def test_masquerade_rules_mirror_iptables_order_without_upstream_shadowing():
    nft, _ = rules()
    bodies = [r.body for r in nft.rules() if r.chain == "postrouting"]
    assert bodies == [
        "meta mark & 0x4000 == 0x4000 return",
        "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        # upstream nft writes `saddr != L daddr N return`, shadowing the last rule
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
    ]


def test_a_rule_edited_in_place_or_a_new_subnet_is_not_present():
    nft, fake = rules()
    nft.apply()
    comments = fake.table["chains"]["postrouting"]
    assert all(len(c.rsplit(" #", 1)[1]) == 8 for c in comments)
    moved, _ = rules(subnet="10.244.4.0/24")
    moved.runner = fake
    assert not moved.present()
    moved.apply()
    assert moved.present() and not nft.present()


def test_no_masq_means_no_nat_chain_but_forward_rules_stay():
    nft, fake = rules(masq=False)
    nft.apply()
    assert set(fake.table["chains"]) == {"forward"}
    assert "delete chain ip flannelish postrouting" in fake.scripts[-1]


def test_drop_rule_is_armed_only_once_peers_are_known():
    nft, fake = rules()
    nft.apply()
    assert "input" not in fake.table["chains"]
    assert nft.present()
    nft.set_peers(["198.18.0.2", "198.18.0.3"])
    assert labels(fake.table["chains"]["input"]) == ["anti-spoof: vxlan from non-peers"]
    assert fake.table["set"] == {IPv4Address("198.18.0.2"), IPv4Address("198.18.0.3")}
    assert nft.present()


def test_allow_any_leaves_the_drop_rule_out_but_keeps_the_set_current():
    nft, fake = rules(allow_any_vxlan=True)
    nft.set_peers(["198.18.0.2"])
    nft.apply()
    assert "input" not in fake.table["chains"]
    assert fake.table["set"] == {IPv4Address("198.18.0.2")}


def test_set_peers_writes_only_the_difference():
    nft, fake = rules()
    nft.set_peers(["198.18.0.2", "198.18.0.3"])  # table absent: remembered only
    assert fake.scripts == []
    nft.apply()
    nft.set_peers(["198.18.0.3", "198.18.0.4"])
    assert fake.scripts[-1] == (
        "add element ip flannelish vxlan_peers { 198.18.0.4 }\n"
        "delete element ip flannelish vxlan_peers { 198.18.0.2 }\n"
    )
    count = len(fake.scripts)
    nft.set_peers(["198.18.0.4", "198.18.0.3"])
    assert len(fake.scripts) == count  # no change, no transaction


def test_present_detects_a_missing_rule_table_or_element_and_ensure_repairs():
    nft, fake = rules()
    nft.set_peers(["198.18.0.2"])
    assert nft.ensure() is True  # table absent -> created
    assert nft.ensure() is False
    fake.table["chains"]["postrouting"].pop(2)
    assert not nft.present()
    assert nft.ensure() is True and nft.present()
    fake.table["set"].clear()
    assert not nft.present()
    nft.ensure()
    fake.table = None
    assert not nft.present()
    nft.ensure()
    assert nft.present() and fake.table["set"] == {IPv4Address("198.18.0.2")}


def test_apply_is_idempotent_and_remove_is_clean():
    nft, fake = rules()
    nft.set_peers(["198.18.0.2"])
    nft.apply()
    first = copy_table(fake.table["chains"])
    nft.apply()
    assert fake.table["chains"] == first
    nft.remove()
    assert fake.table is None
    nft.remove()  # already gone is fine


def test_host_gw_nodes_have_no_vxlan_port_and_no_drop_rule():
    nft, _ = rules(vxlan_port=None)
    nft.set_peers(["198.18.0.2"])
    assert not nft.armed
    assert all(r.chain != "input" for r in nft.rules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subnet": "10.245.0.0/24"}, "not inside network"),
        ({"network": "10.244.0.1/16"}, "invalid network"),
        ({"network": "fd00::/48", "subnet": "fd00::/64"}, "IPv4 networks only"),
        ({"vxlan_port": 70000}, "out of range"),
    ],
)
def test_bad_input_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        rules(**kwargs)


def test_bad_peer_ip_is_a_config_error():
    nft, _ = rules()
    with pytest.raises(ConfigError, match="invalid peer PublicIP"):
        nft.set_peers(["198.18.0.300"])


def test_parse_port_defaults_to_the_kernel_vxlan_port():
    assert parse_port(None) == 8472
    assert parse_port(0) == 8472
    assert parse_port("4789") == 4789
    with pytest.raises(ConfigError):
        parse_port("x")


def test_parse_table_reads_set_elements_and_drop_counter():
    state = parse_table(
        [
            {"set": {"name": "vxlan_peers", "elem": ["198.18.0.2"]}},
            {"chain": {"name": "input"}},
            {
                "rule": {
                    "chain": "input",
                    "comment": "anti-spoof: vxlan from non-peers",
                    "expr": [{"counter": {"packets": 3, "bytes": 300}}, {"drop": None}],
                }
            },
        ]
    )
    assert state.peers == {IPv4Address("198.18.0.2")}
    assert state.rejected_packets == 3
    assert state.chains == {"input": ["anti-spoof: vxlan from non-peers"]}


def _lease(n: int, ip: str):
    from ipaddress import IPv4Network

    from flannelish.subnet.lease import Lease, LeaseAttrs

    return Lease(IPv4Network(f"10.244.{n}.0/24"), LeaseAttrs(IPv4Address(ip), "vxlan"))


def test_owner_lets_the_reconciler_diff_the_peer_set_and_arms_after_a_synced_pass():
    from flannelish.daemon.reconciler import Reconciler
    from flannelish.node.firewall import NftOwner

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    peers = [_lease(2, "198.18.0.2"), _lease(3, "198.18.0.3")]
    rec.reconcile([])  # start-up pass before the watch: table without the drop rule
    assert fake.table is not None and "input" not in fake.table["chains"]
    owner.arm()
    rec.reconcile(peers)  # set filled, still unarmed
    assert fake.table["set"] == {IPv4Address("198.18.0.2"), IPv4Address("198.18.0.3")}
    assert "input" not in fake.table["chains"]
    owner.after_pass()  # end of that pass (the daemon's on_pass hook): arm now
    assert labels(fake.table["chains"]["input"]) == ["anti-spoof: vxlan from non-peers"]
    assert rec.reconcile(peers).changes == 0
    result = rec.reconcile(peers[:1])
    assert result.changes == 1 and fake.table["set"] == {IPv4Address("198.18.0.2")}
    fake.table = None  # deleted by hand: restored with its elements in one pass
    rec.reconcile(peers[:1])
    assert owner.repairs == 1
    assert fake.table["set"] == {IPv4Address("198.18.0.2")}
    assert labels(fake.table["chains"]["input"]) == ["anti-spoof: vxlan from non-peers"]


def test_owner_writes_many_peer_changes_in_one_transaction_per_direction():
    from flannelish.daemon.reconciler import Reconciler
    from flannelish.node.firewall import NftOwner

    nft, fake = rules()
    rec = Reconciler([NftOwner(nft)])
    rec.reconcile([])
    many = [_lease(n, f"198.18.1.{n}") for n in range(1, 201)]
    before = len(fake.scripts)
    result = rec.reconcile(many)
    assert result.errors == 0 and result.changes == 200
    assert len(fake.scripts) - before == 1  # not 200 nft processes
    assert len(fake.table["set"]) == 200
    before = len(fake.scripts)
    rec.reconcile(many[:50])
    assert len(fake.scripts) - before == 1 and len(fake.table["set"]) == 50


def test_lease_event_passes_without_the_base_check_still_restore_and_never_arm_early():
    from flannelish.daemon.reconciler import Reconciler
    from flannelish.node.firewall import NftOwner

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    peers = [_lease(2, "198.18.0.2")]
    rec.reconcile(peers)
    fake.table = None  # deleted by hand, then a lease event arrives
    result = rec.reconcile(peers, check_base=False)
    assert result.errors == 0 and owner.repairs == 1
    assert fake.table["set"] == {IPv4Address("198.18.0.2")}
    owner.arm()
    real_run = fake.run

    def failing(script: str) -> None:
        if "add element" in script:
            raise KernelError("nftables transaction failed", "injected")
        real_run(script)

    fake.run = failing  # type: ignore[method-assign]
    rec.reconcile([*peers, _lease(3, "198.18.0.3")], check_base=False)
    owner.after_pass()
    assert not nft.armed  # the set is incomplete: arming would drop 198.18.0.3
    fake.run = real_run  # type: ignore[method-assign]
    rec.reconcile([*peers, _lease(3, "198.18.0.3")], check_base=False)
    owner.after_pass()
    assert nft.armed and "input" in fake.table["chains"]


def test_after_pass_from_another_thread_mid_pass_does_not_arm_before_the_set_is_written():
    from flannelish.daemon.reconciler import Reconciler
    from flannelish.node.firewall import NftOwner

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    rec.reconcile([])
    owner.arm()
    real_run = fake.run
    seen = []

    def run(script: str) -> None:
        if "add element" in script:  # the set write of this pass is about to happen...
            owner.after_pass()  # ...when the backend's loop reports its own pass
            seen.append(nft.armed)
        real_run(script)

    fake.run = run  # type: ignore[method-assign]
    rec.reconcile([_lease(2, "198.18.0.2")])
    assert seen == [False]
    owner.after_pass()
    assert nft.armed and fake.table["set"] == {IPv4Address("198.18.0.2")}


@pytest.mark.parametrize("check_base", [True, False], ids=["base-check", "lease-event-pass"])
def test_a_restored_table_brings_its_drop_rule_and_its_peers_in_one_transaction(check_base):
    # A table deleted behind our back must not come back armed with an empty set for
    # a moment: every VXLAN packet of a real peer would be dropped until the next write.
    from flannelish.daemon.reconciler import Reconciler
    from flannelish.node.firewall import NftOwner

    nft, fake = rules()
    owner = NftOwner(nft)
    rec = Reconciler([owner])
    peers = [_lease(2, "198.18.0.2"), _lease(3, "198.18.0.3")]
    rec.reconcile([])
    owner.arm()
    rec.reconcile(peers)
    owner.after_pass()
    assert nft.armed
    fake.table = None
    before = len(fake.scripts)
    rec.reconcile(peers, check_base=check_base)
    restore = fake.scripts[before]
    assert "anti-spoof" in restore
    assert re.search(r"add element ip flannelish vxlan_peers \{ 198.18.0.2, 198.18.0.3 \}", restore)
    assert owner.repairs == 1
    assert fake.table["set"] == {IPv4Address("198.18.0.2"), IPv4Address("198.18.0.3")}
