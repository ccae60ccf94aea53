"""Result rendering per cniVersion and prevResult normalisation."""

from __future__ import annotations

import json

import pytest
from flannelish.cni.result import normalize, render

pytestmark = pytest.mark.unit

RESULT = {
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1450},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:01", "mtu": 1450, "sandbox": "/n"},
    ],
    "ips": [
        {"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 1},
        {"address": "fd00::2/64", "interface": 0},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "scope": 0}],
    "dns": {},
}


def test_1_1_0_keeps_interface_and_route_extensions():
    out = json.loads(render(RESULT, "1.1.0"))
    assert out["interfaces"][0]["mtu"] == 1450 and out["routes"][0]["mtu"] == 1400
    assert out["routes"][0]["scope"] == 0  # zero is a value, not "empty"
    assert all("version" not in ip for ip in out["ips"])


def test_1_0_0_drops_the_1_1_0_only_fields():
    out = json.loads(render(RESULT, "1.0.0"))
    assert "mtu" not in out["interfaces"][0]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]


def test_0_4_0_adds_version_matching_each_address_family():
    out = json.loads(render(RESULT, "0.4.0"))
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["ips"][1]["interface"] == 0  # index 0 is serialised
    assert out["cniVersion"] == "0.4.0" and out["dns"] == {}


def test_output_is_pretty_printed_like_the_reference():
    assert render(RESULT, "1.0.0").startswith('{\n    "cniVersion": "1.0.0",')


def test_normalize_drops_version_keys_and_copies():
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.0.2/24"}]}
    norm = normalize(prev)
    assert norm["ips"] == [{"address": "10.1.0.2/24"}]
    norm["ips"].clear()
    assert prev["ips"]
