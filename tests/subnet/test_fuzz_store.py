"""Hypothesis fuzzing of every parser of outside input on the datastore side.

Lease keys, lease values (nested, oversized, binary), the network config and
subnet.env text come from etcd or from disk, i.e. from anyone who can write
there.  Each parser returns a result or raises the project's own error type
(flannelish.errors); any other exception fails the test.  Example counts come
from the hypothesis profile (tests/conftest.py: FLANNELISH_FUZZ=1 for a long
run, `make fuzz`).
"""

from __future__ import annotations

import json
import string
from ipaddress import IPv4Network, IPv6Network
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannelish.errors import ConfigError, FlannelishError
from flannelish.subnet.config import NetworkConfig, parse_network_config
from flannelish.subnet.etcdoptions import EtcdOptions
from flannelish.subnet.etcdwatch import KeyValue
from flannelish.subnet.jsonvalue import MAX_DEPTH, MAX_VALUE_BYTES
from flannelish.subnet.keys import Keys, parse_subnet_key, subnet_key
from flannelish.subnet.lease import Lease, LeaseAttrs, LeaseDecodeError
from flannelish.subnet.registry import BadLease, EtcdRegistry
from flannelish.subnet_env import parse_subnet_env_text, previous_subnet, read_subnet_env

pytestmark = pytest.mark.unit

KEYS = Keys("/coreos.com/network")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- lease keys -----------------------------------------------------------------

_v4 = st.builds(
    lambda addr, plen: IPv4Network((addr, plen), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
_v6 = st.builds(
    lambda addr, plen: IPv6Network((addr, plen), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
_canonical_key = st.builds(subnet_key, _v4, st.none() | _v6)


@st.composite
def _mangled_key(draw: st.DrawFn) -> str:
    """A valid key, then one or more edits a buggy or hostile writer might make."""
    key = draw(_canonical_key)
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["insert", "delete", "upper", "zero", "newline", "repeat"]))
        pos = draw(st.integers(0, len(key)))
        if edit == "insert":
            key = key[:pos] + draw(st.sampled_from(list("0123456789.-&:/ \x00af\n"))) + key[pos:]
        elif edit == "delete" and key:
            key = key[: max(pos - 1, 0)] + key[pos:]
        elif edit == "upper":
            key = key.upper()
        elif edit == "zero":
            key = key[:pos] + "0" + key[pos:]
        elif edit == "newline":
            key += "\n"
        elif edit == "repeat":
            key = key * draw(st.integers(2, 50))
    return key


_any_key = (
    _canonical_key
    | _mangled_key()
    | st.text(max_size=80)
    | st.text(alphabet="0123456789.-&:abcdef", max_size=300)
)


@FUZZ
@given(_any_key)
def test_fuzz_lease_key_parse_is_none_or_the_canonical_subnets(key):
    parsed = parse_subnet_key(key)
    if parsed is not None:  # only keys that renewal and deletion would rebuild exactly
        assert subnet_key(*parsed) == key
    full = KEYS.subnets + key
    assert KEYS.parse(full) == parsed
    assert KEYS.parse(full.encode("utf-8", "surrogatepass")) == parsed
    if parsed is not None:
        assert KEYS.subnet(*parsed) == full


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_lease_key_bytes_never_raise(raw):
    result = KEYS.parse(KEYS.subnets.encode() + raw)
    assert result is None or isinstance(result[0], IPv4Network)


@FUZZ
@given(_canonical_key)
def test_fuzz_every_canonical_key_parses_back(key):
    parsed = parse_subnet_key(key)
    assert parsed is not None and subnet_key(*parsed) == key


# -- lease values: nested, oversized, binary --------------------------------------

_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["198.18.0.9", "fd00::9", "vxlan", "host-gw", "0a:00:00:00:00:09"])
)
_json = st.recursive(
    _leaf,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=12), kids, max_size=3)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "PublicIP",
        "publicip",
        "PUBLICIP",
        "PublicIPv6",
        "BackendType",
        "BackendData",
        "BackendV6Data",
    ]
)
_lease_doc = st.dictionaries(_fields, _json, max_size=6)


@st.composite
def _nested(draw: st.DrawFn) -> bytes:
    """Arrays/objects nested 0..3000 deep, closed or not, optionally inside a lease field."""
    depth = draw(st.integers(0, 3000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")]))
    inner = opener * depth + b"1" + (closer * depth if draw(st.booleans()) else b"")
    if draw(st.booleans()):
        return b'{"PublicIP":"198.18.0.9","BackendData":' + inner + b"}"
    return inner


@st.composite
def _sized(draw: st.DrawFn) -> bytes:
    """A valid lease padded to just under, at or over the size cap."""
    size = MAX_VALUE_BYTES + draw(st.integers(-64, 64))
    head = b'{"PublicIP":"198.18.0.9","BackendType":"vxlan","Pad":"'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


_lease_value = (
    _lease_doc.map(lambda d: json.dumps(d).encode())
    | _json.map(lambda d: json.dumps(d).encode())
    | _nested()
    | _sized()
    | st.binary(max_size=200)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
)


@FUZZ
@given(_lease_value)
def test_fuzz_lease_value_decodes_or_raises_lease_decode_error_only(raw):
    try:
        attrs = LeaseAttrs.from_json(raw)
    except LeaseDecodeError as exc:
        assert str(exc)
        return
    assert len(raw) <= MAX_VALUE_BYTES
    assert LeaseAttrs.from_json(attrs.to_json()) == attrs
    attrs.to_json().encode("utf-8")  # always loggable and writable


@FUZZ
@given(_any_key | _canonical_key, _lease_value)
def test_fuzz_registry_decode_gives_a_lease_or_a_bad_lease_never_an_exception(key, raw):
    registry = EtcdRegistry(EtcdOptions.from_flags(), store=cast(Any, None))  # no connection
    decoded = registry._decode(KeyValue(KEYS.subnets + key, raw, 7, 0))
    assert isinstance(decoded, Lease | BadLease)
    if isinstance(decoded, BadLease):
        assert decoded.reason and registry.bad_leases[-1].key == KEYS.subnets + key


def test_fuzz_depth_limit_boundary_is_exact():
    ok = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    with pytest.raises(LeaseDecodeError, match="not a JSON object"):
        LeaseAttrs.from_json(ok)  # decodes (it is an array), so the depth check let it through
    with pytest.raises(LeaseDecodeError, match="levels deep"):
        LeaseAttrs.from_json(b"[" + ok + b"]")


# -- network config ------------------------------------------------------------------

_config_fields = st.sampled_from(
    [
        *("Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6"),
        *("Backend", "IPv6Network", "IPv6SubnetLen", "EnableNFTables", "network", "BACKEND"),
    ]
)
_config_value = (
    _json | st.sampled_from(["10.5.0.0/16", "10.5.1.0", "fd00::/48"]) | st.integers(-1, 140)
)
_config_raw = (
    st.dictionaries(_config_fields, _config_value, max_size=7).map(lambda d: json.dumps(d).encode())
    | _nested()
    | _sized()
    | st.binary(max_size=200)
)


@FUZZ
@given(_config_raw)
def test_fuzz_network_config_parses_or_raises_config_error_only(raw):
    try:
        config = parse_network_config(raw)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(config, NetworkConfig)
    assert len(raw) <= MAX_VALUE_BYTES


# -- subnet.env -------------------------------------------------------------------------

_env_key = st.sampled_from(
    [
        *("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"),
        *("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "#FLANNEL_MTU", " FLANNEL_MTU"),
        *("flannel_mtu", ""),
    ]
)
_env_value = st.text(max_size=40) | st.sampled_from(
    [
        *("10.5.0.0/16", "10.5.34.1/24", "1450", "true", "false", "fd00::1/64"),
        *("10.5.34.1/24,10.6.0.1/24", "²", "١٤٥٠", "9" * 5000, "-1", "0x10", "1_450", " 1450 "),
    ]
)
_env_text = st.lists(
    st.tuples(_env_key, st.sampled_from(["=", " = ", "==", ""]), _env_value).map("".join),
    max_size=8,
).map(lambda lines: "\n".join(lines)) | st.text(
    alphabet=string.printable + "\x00\u2028\x85²", max_size=300
)


@FUZZ
@given(_env_text)
def test_fuzz_subnet_env_text_parse_never_raises(text):
    values = parse_subnet_env_text(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(_env_text.map(lambda t: t.encode("utf-8", "surrogatepass")) | st.binary(max_size=200))
def test_fuzz_subnet_env_file_reads_or_raises_config_error_only(tmp_path, raw):
    path = tmp_path / "subnet.env"
    path.write_bytes(raw)
    try:
        env = read_subnet_env(path)
    except FlannelishError:
        pass
    else:
        assert env is not None
    subnet = previous_subnet(path)  # the daemon's start-up path: never raises
    assert subnet is None or isinstance(subnet, IPv4Network)


@pytest.mark.parametrize(
    "raw", [b"\x80", "FLANNEL_MTU=\u00b2".encode(), b"FLANNEL_MTU=" + b"9" * 5000]
)
def test_corrupt_subnet_env_never_crashes_startup(tmp_path, raw):
    path = tmp_path / "subnet.env"
    path.write_bytes(raw)
    assert previous_subnet(path) is None
