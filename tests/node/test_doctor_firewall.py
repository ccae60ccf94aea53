"""The input-hook evaluator behind `doctor`'s firewall check (recorded `nft -j` output)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest

from flannelish.node.nft_verdict import Packet, input_blocks

pytestmark = pytest.mark.unit

# `nft -j list ruleset` of (nft 1.0.6):
#   table inet fw {
#     set allowed { type ipv4_addr; elements = { 198.18.0.2 }; }
#     chain input { type filter hook input priority 0; policy drop;
#       ct state established,related accept
#       iifname "lo" accept
#       meta l4proto udp th dport 8000-9000 jump vx
#       tcp dport 22 accept
#       udp dport { 4789, 8472 } ip saddr @allowed accept
#       limit rate 10/second udp dport 8472 drop }
#     chain vx { ip saddr 198.18.0.0/24 return
#                ip saddr != 198.18.0.0/24 drop } }
SAMPLE = json.loads(
    """
[
 {
  "table": {
   "family": "inet",
   "name": "fw",
   "handle": 1
  }
 },
 {
  "set": {
   "family": "inet",
   "name": "allowed",
   "table": "fw",
   "type": "ipv4_addr",
   "handle": 3,
   "elem": [
    "198.18.0.2"
   ]
  }
 },
 {
  "chain": {
   "family": "inet",
   "table": "fw",
   "name": "input",
   "handle": 1,
   "type": "filter",
   "hook": "input",
   "prio": 0,
   "policy": "drop"
  }
 },
 {
  "chain": {
   "family": "inet",
   "table": "fw",
   "name": "vx",
   "handle": 2
  }
 },
 {
  "rule": {
   "family": "inet",
   "table": "fw",
   "chain": "input",
   "handle": 4,
   "expr": [
    {
     "match": {
      "op": "in",
      "left": {
       "ct": {
        "key": "state"
       }
      },
      "right": [
       "established",
       "related"
      ]
     }
    },
    {
     "accept": null
    }
   ]
  }
 },
 {
  "rule": {
   "family": "inet",
   "table": "fw",
   "chain": "input",
   "handle": 5,
   "expr": [
    {
     "match": {
      "op": "==",
      "left": {
       "meta": {
        "key": "iifname"
       }
      },
      "right": "lo"
     }
    },
    {
     "accept": null
    }
   ]
  }
 },
 {
  "rule": {
   "family": "inet",
   "table": "fw",
   "chain": "input",
   "handle": 6,
   "expr": [
    {
     "match": {
      "op": "==",
      "left": {
       "payload": {
        "protocol": "udp",
        "field": "dport"
       }
      },
      "right": {
       "range": [
        8000,
        9000
       ]
      }
     }
    },
    {
     "jump": {
      "target": "vx"
     }
    }
   ]
  }
 },
 {
  "rule": {
   "family": "inet",
   "table": "fw",
   "chain": "input",
   "handle": 7,
   "expr": [
    {
     "match": {
      "op": "==",
      "left": {
       "payload": {
        "protocol": "tcp",
        "field": "dport"
       }
      },
      "right": 22
     }
    },
    {
     "accept": null
    }
   ]
  }
 },
 {
  "rule": {
   "family": "inet",
   "table": "fw",
   "chain": "input",
   "handle": 9,
   "expr": [
    {
     "match": {
      "op": "==",
      "left": {
       "payload": {
        "protocol": "udp",
        "field": "dport"
       }
      },
      "right": {
       "set": [
        4789,
        8472
       ]
      }
     }
    },
    {
     "match": {
      "op": "==",
      "left": {
       "payload": {
        "protocol": "ip",
        "field": "saddr"
       }
      },
      "right": "@allowed"
     }
    },
    {
     "accept": null
    }
   ]
  }
 },
 {
  "rule": {
   "family": "inet",
   "table": "fw",
   "chain": "input",
   "handle": 10,
   "expr": [
    {
     "limit": {
      "rate": 10,
      "burst": 5,
      "per": "second"
     }
    },
    {
     "match": {
      "op": "==",
      "left": {
       "payload": {
        "protocol": "udp",
        "field": "dport"
       }
      },
      "right": 8472
     }
    },
    {
     "drop": null
    }
   ]
  }
 },
 {
  "rule": {
   "family": "inet",
   "table": "fw",
   "chain": "vx",
   "handle": 11,
   "expr": [
    {
     "match": {
      "op": "==",
      "left": {
       "payload": {
        "protocol": "ip",
        "field": "saddr"
       }
      },
      "right": {
       "prefix": {
        "addr": "198.18.0.0",
        "len": 24
       }
      }
     }
    },
    {
     "return": null
    }
   ]
  }
 },
 {
  "rule": {
   "family": "inet",
   "table": "fw",
   "chain": "vx",
   "handle": 12,
   "expr": [
    {
     "match": {
      "op": "!=",
      "left": {
       "payload": {
        "protocol": "ip",
        "field": "saddr"
       }
      },
      "right": {
       "prefix": {
        "addr": "198.18.0.0",
        "len": 24
       }
      }
     }
    },
    {
     "drop": null
    }
   ]
  }
 }
]
"""
)


def vxlan(src: str | None, port: int = 8472) -> Packet:
    return Packet("udp", port, saddr=IPv4Address(src) if src else None, iifname="eth0")


def test_allowed_peer_passes():
    assert input_blocks(SAMPLE, vxlan("198.18.0.2")) == []


def test_other_source_on_the_underlay_hits_the_policy_after_a_possible_limit_drop():
    (block,) = input_blocks(SAMPLE, vxlan("198.18.0.7"))
    assert (block.table, block.chain, block.rule) == ("fw", "input", "policy drop")
    assert block.certain  # the rate-limited drop or the policy: dropped either way


def test_jump_target_drop_is_found_with_its_handle():
    (block,) = input_blocks(SAMPLE, vxlan("10.9.9.9", port=8500))
    assert block.chain == "input" and block.certain
    assert block.rule.startswith("rule handle ") and block.rule.endswith(" of chain vx")


def test_unknown_source_is_only_a_possible_drop_when_an_accept_might_apply():
    (block,) = input_blocks(SAMPLE, vxlan(None))
    assert not block.certain


def test_tcp_rules_do_not_match_udp_and_other_hooks_are_ignored():
    ruleset = [
        {"chain": {"family": "ip", "table": "t", "name": "in", "hook": "input", "prio": 0,
                   "policy": "accept"}},
        {"chain": {"family": "ip", "table": "t", "name": "fw", "hook": "forward", "prio": 0,
                   "policy": "drop"}},
        {"rule": {"family": "ip", "table": "t", "chain": "in", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": 8472}}, {"drop": None}]}},
    ]  # fmt: skip
    assert input_blocks(ruleset, vxlan("198.18.0.2")) == []
    (fwd,) = input_blocks(ruleset, vxlan("198.18.0.2"), hook="forward")
    assert fwd.rule == "policy drop" and fwd.certain


def test_flannelish_anti_spoof_rule_drops_only_non_members():
    ruleset = [
        {"set": {"family": "ip", "table": "flannelish", "name": "vxlan_peers",
                 "elem": ["198.18.0.2"]}},
        {"chain": {"family": "ip", "table": "flannelish", "name": "input", "hook": "input",
                   "prio": 0, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "flannelish", "chain": "input", "handle": 9,
                  "comment": "anti-spoof: vxlan from non-peers", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": 8472}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": "@vxlan_peers"}},
            {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]}},
    ]  # fmt: skip
    assert input_blocks(ruleset, vxlan("198.18.0.2")) == []
    (block,) = input_blocks(ruleset, vxlan("198.18.0.3"))
    assert block.certain and block.rule == "rule handle 9 (anti-spoof: vxlan from non-peers)"
    assert input_blocks(ruleset, vxlan("198.18.0.2", port=4789)) == []
