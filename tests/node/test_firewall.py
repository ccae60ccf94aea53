"""NftRules logic against flannelish.testing.nft.FakeNft, which interprets what NftRules emits."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest

from flannelish.errors import ConfigError
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
    nft, fake = rules(masq=False, notrack=False)
    nft.apply()
    assert set(fake.table["chains"]) == {"forward"}
    assert "delete chain ip flannelish postrouting" in fake.scripts[-1]


def test_tunnel_packets_between_peers_skip_conntrack_before_it_runs():
    nft, fake = rules(vxlan_port=4789)
    nft.apply()  # not armed yet: the notrack chains do not wait for the peers
    raw = [(r.chain, r.body) for r in nft.rules() if r.chain in ("prerouting", "output")]
    # Only the tunnel's UDP port and only between known peers: any other UDP,
    # and VXLAN from strangers (dropped by the anti-spoof rule), stay tracked.
    assert raw == [
        ("prerouting", "udp dport 4789 ip saddr @vxlan_peers notrack"),
        ("output", "udp dport 4789 ip daddr @vxlan_peers notrack"),
    ]
    assert labels(fake.table["chains"]["prerouting"]) == ["notrack: vxlan from peers"]
    # Raw priority (-300): before conntrack (-200) on both paths a tunnel packet takes.
    script = fake.scripts[-1]
    assert "add chain ip flannelish prerouting { type filter hook prerouting priority raw;" in (
        script
    )
    assert "add chain ip flannelish output { type filter hook output priority raw;" in script
    nft.set_peers(["198.18.0.2"])
    assert nft.present()


def test_without_notrack_or_without_vxlan_the_raw_chains_are_removed():
    nft, fake = rules()
    nft.apply()
    assert {"prerouting", "output"} <= set(fake.table["chains"])
    for kwargs in ({"notrack": False}, {"vxlan_port": None}):
        other, _ = rules(**kwargs)
        other.runner = fake
        assert not other.present()
        other.apply()
        assert not {"prerouting", "output"} & set(fake.table["chains"])
        assert "delete chain ip flannelish output" in fake.scripts[-1]
        nft.apply()


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
        ({"network": "fd00::/48", "subnet": "fd00::/64"}, "expected IPv4 networks"),
        ({"network": None, "subnet": None}, "an IPv4 or an IPv6 network"),
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
