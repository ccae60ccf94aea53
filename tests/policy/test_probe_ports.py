"""UDP probes use fresh source ports below the ephemeral range (no stale conntrack reuse)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from flannelish.policy.probe import _bind_udp_source

pytestmark = pytest.mark.unit


def test_consecutive_udp_probes_bind_distinct_ports_outside_the_ephemeral_range():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = []
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            _bind_udp_source(s, ipv6=False)
            ports.append(s.getsockname()[1])
    assert len(set(ports)) == 50
    assert all(20000 <= p < min(low, 32000) for p in ports)
