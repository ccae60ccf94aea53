"""Network config parsing: Flannel's defaults, validation and worked examples.

docs/flannel-compat.md §2; the examples are numbered as in its §13.
"""

from __future__ import annotations

import contextlib
import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannelish.errors import ConfigError, ExitCode
from flannelish.subnet.config import NetworkConfig, parse_network_config

pytestmark = pytest.mark.unit


def test_vector1_defaults_for_a_slash16_with_vxlan():
    cfg = parse_network_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
    assert cfg.network == IPv4Network("10.5.0.0/16")
    assert cfg.subnet_len == 24
    assert cfg.subnet_min == IPv4Address("10.5.1.0")
    assert cfg.subnet_max == IPv4Address("10.5.255.0")
    assert cfg.backend_type == "vxlan"
    assert cfg.backend == {"Type": "vxlan"}
    assert cfg.enable_ipv4 and not cfg.enable_ipv6


def test_vector2_small_network_splits_in_four_and_backend_defaults_to_udp():
    cfg = parse_network_config('{"Network":"10.5.0.0/24"}')
    assert cfg.subnet_len == 26
    assert cfg.subnet_min == IPv4Address("10.5.0.64")
    assert cfg.subnet_max == IPv4Address("10.5.0.192")
    assert cfg.backend_type == "udp"


def test_vector3_field_names_and_backend_type_are_case_insensitive():
    cfg = parse_network_config('{"network":"10.5.0.0/16","backend":{"type":"VXLAN","vni":4}}')
    assert cfg.network == IPv4Network("10.5.0.0/16")
    assert cfg.backend_type == "vxlan"
    assert cfg.backend["vni"] == 4  # raw section: the backend parses its own options


def test_vector5_ipv6_defaults():
    cfg = parse_network_config(
        '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48"}'
    )
    assert cfg.ipv6_network == IPv6Network("fd00::/48")
    assert cfg.ipv6_subnet_len == 64
    assert cfg.ipv6_subnet_min == IPv6Address("fd00:0:0:1::")
    assert cfg.ipv6_subnet_max == IPv6Address("fd00:0:0:ffff::")


def test_host_bits_of_network_are_masked():
    assert parse_network_config('{"Network":"10.5.1.0/16"}').network == IPv4Network("10.5.0.0/16")


def test_ipv6_only_config_has_no_ipv4_pool():
    cfg = parse_network_config('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48"}')
    assert cfg.network is None and cfg.subnet_count == 0
    assert cfg.ipv6_subnet_len == 64


def test_unknown_fields_and_nulls_are_ignored_like_go():
    cfg = parse_network_config('{"Network":"10.5.0.0/16","SubnetLen":null,"Whatever":[1]}')
    assert cfg.subnet_len == 24


def test_explicit_pool_bounds_are_kept_and_enumerated_in_order():
    cfg = parse_network_config(
        '{"Network":"10.5.0.0/16","SubnetLen":28,"SubnetMin":"10.5.7.0","SubnetMax":"10.5.7.48"}'
    )
    assert [str(s) for s in cfg.subnet_candidates()] == [
        "10.5.7.0/28",
        "10.5.7.16/28",
        "10.5.7.32/28",
        "10.5.7.48/28",
    ]
    assert cfg.subnet_count == 4
    assert cfg.in_pool(IPv4Network("10.5.7.16/28"))
    assert not cfg.in_pool(IPv4Network("10.5.7.64/28"))
    assert not cfg.in_pool(IPv4Network("10.5.7.0/24"))


def test_default_subnet_len_for_mid_sized_networks_is_prefix_plus_two():
    assert parse_network_config('{"Network":"10.5.0.0/23"}').subnet_len == 25
    assert parse_network_config('{"Network":"10.5.0.0/28"}').subnet_len == 30
    assert parse_network_config('{"Network":"10.5.0.0/22"}').subnet_len == 24


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"Network":"10.5.0.0/29"}', "Network is too small. Minimum useful network prefix is /28"),
        ('{"Network":"10.0.0.0/16","SubnetLen":31}', "SubnetLen must be less than /31"),
        ('{"Network":"10.0.0.0/16","SubnetLen":17}', "at least four subnets"),
        (
            '{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.4"}',
            "SubnetMin is not on a SubnetLen boundary: 10.10.0.4",
        ),
        ('{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}', "SubnetMin is not in the range"),
        ('{"Network":"10.0.0.0/16","SubnetMax":"10.1.0.0"}', "SubnetMax is not in the range"),
        ("{}", "please define a correct Network parameter"),
        ('{"Network":"10.0.0.0"}', "Network must be a CIDR with a prefix length"),
        ('{"Network":"fd00::/48"}', "Network must be an IPv4 CIDR"),
        ('{"Network":"10.0.0.0/33"}', 'Network="10.0.0.0/33" is not a CIDR'),
        ('{"Network":16}', "Network must be a CIDR string"),
        (
            '{"Network":"10.0.0.0/16","SubnetLen":"24"}',
            'SubnetLen must be an integer: SubnetLen="24"',
        ),
        ('{"Network":"10.0.0.0/16","SubnetLen":24.5}', "SubnetLen must be an integer"),
        ('{"Network":"10.0.0.0/16","SubnetLen":true}', "SubnetLen must be an integer"),
        ('{"Network":"10.0.0.0/16","EnableIPv4":"yes"}', "EnableIPv4 must be true or false"),
        ('{"EnableIPv4":false}', "no IP stack is defined"),
        ('{"Network":"10.0.0.0/16","EnableIPv6":true}', "correct IPv6Network parameter"),
        (
            '{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}',
            "SubnetMin is greater than SubnetMax: 10.0.9.0 > 10.0.3.0",
        ),
        ('{"Network":"10.0.0.0/16","Backend":"vxlan"}', "Backend must be a JSON object"),
        ('{"Network":"10.0.0.0/16","Backend":{}}', "Backend.Type must be a non-empty string"),
        ('{"Network":"10.0.0.0/16","Backend":{"Type":1}}', "Backend.Type=1"),
        ('{"Network":"10.0.0.0/16",', "network config is not valid JSON"),
        ("[1,2]", "network config must be a JSON object: got list [1, 2]"),
        (b"\xff\xfe", "network config is not valid JSON"),
    ],
)
def test_invalid_config_is_a_config_error_naming_field_and_value(raw, expected):
    with pytest.raises(ConfigError) as info:
        parse_network_config(raw)
    assert expected in str(info.value)
    assert info.value.exit_code == ExitCode.CONFIG


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [
        "Network",
        "network",
        "SubnetLen",
        "SubnetMin",
        "SubnetMax",
        "EnableIPv4",
        "EnableIPv6",
        "IPv6Network",
        "IPv6SubnetLen",
        "IPv6SubnetMin",
        "IPv6SubnetMax",
        "Backend",
    ]
)
_plausible = st.one_of(
    _json,
    st.integers(min_value=-1, max_value=140),
    st.sampled_from(["10.5.0.0/16", "10.5.7.0", "10.5.0.0/30", "fd00::/48", "fd00::", "1.2.3"]),
    st.fixed_dictionaries({"Type": _json}),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_field_names, _plausible, max_size=6))
def test_fuzzed_config_objects_parse_or_raise_config_error_only(doc):
    try:
        cfg = parse_network_config(json.dumps(doc))
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, NetworkConfig)
    if cfg.enable_ipv4:
        assert cfg.network is not None and cfg.subnet_min is not None
        assert cfg.subnet_min in cfg.network and cfg.subnet_max in cfg.network
        assert cfg.network.prefixlen + 2 <= cfg.subnet_len <= 30


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_fuzzed_raw_bytes_parse_or_raise_config_error_only(raw):
    with contextlib.suppress(ConfigError):
        parse_network_config(raw)
