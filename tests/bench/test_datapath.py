"""bench/datapath.py's per-family plan and its iperf3 accounting (no namespaces)."""

from __future__ import annotations

import json
import sys
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import datapath  # noqa: E402


def test_ipv6_runs_at_underlay_minus_70_on_both_sides_and_inside_its_hand_network():
    v4, v6 = datapath.FAMILIES[4], datapath.FAMILIES[6]
    assert (v4.mtu, v4.device, v4.nft_family) == (1450, "flannel.1", "ip")
    # The tunnel runs over IPv6: 40-byte outer header, so 1500 - 70 (not Flannel's -50).
    assert (v6.mtu, v6.device, v6.nft_family) == (1430, "flannel-v6.1", "ip6")
    assert v4.hand_subnet(1) == IPv4Network("10.99.2.0/24")
    subnets = [v6.hand_subnet(i) for i in range(2)]
    assert subnets == [IPv6Network("fd44:0:0:9901::/64"), IPv6Network("fd44:0:0:9902::/64")]
    assert all(s.subnet_of(v6.hand_network()) for s in subnets)
    assert all(v4.hand_subnet(i).subnet_of(v4.hand_network()) for i in range(2))


def test_iperf_json_gives_the_received_rate_and_cpu_per_gigabyte():
    doc = {
        "end": {
            "sum_received": {"bits_per_second": 4e9, "seconds": 2.0, "bytes": 1e9},
            "cpu_utilization_percent": {"host_total": 60.0, "remote_total": 40.0},
        }
    }
    gbps, cpu_per_gb = datapath.parse_iperf(json.dumps(doc))
    assert gbps == 4.0 and cpu_per_gb == pytest.approx(2.0)  # (0.6 + 0.4) * 2 s / 1 GB
    with pytest.raises(RuntimeError, match="unable to connect"):
        datapath.parse_iperf(json.dumps({"error": "unable to connect to server"}))


def test_ethtool_differences_ignore_the_fixed_marker():
    a = {"generic-receive-offload": "on", "tx-checksumming": "on [fixed]"}
    b = {"generic-receive-offload": "off", "tx-checksumming": "on"}
    assert datapath.feature_diff(a, b) == ["generic-receive-offload: on vs off"]
