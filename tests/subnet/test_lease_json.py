"""Lease JSON is byte-compatible with Flannel (docs/flannel-compat.md §3, example 7 of §13)."""

import contextlib
import json
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannelish.subnet.lease import LeaseAttrs, LeaseDecodeError

pytestmark = pytest.mark.unit

VECTOR7 = (
    '{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}}'
)


def test_vector7_exact_bytes_round_trip():
    attrs = LeaseAttrs.from_json(VECTOR7)
    assert attrs.public_ip == IPv4Address("192.168.1.10")
    assert attrs.vtep_mac == "0a:58:0a:f4:01:01"
    assert attrs.to_json() == VECTOR7


def test_host_gw_lease_omits_backend_data():
    attrs = LeaseAttrs(IPv4Address("10.0.0.5"), "host-gw")
    assert attrs.to_json() == '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}'


@pytest.mark.parametrize(
    "raw", ['{"PublicIP":"nope"}', "[]", "not json", '{"PublicIP":"1.2.3.4","BackendData":3}']
)
def test_bad_lease_values_raise_decode_error(raw):
    with pytest.raises(LeaseDecodeError):
        LeaseAttrs.from_json(raw)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
_fields = st.sampled_from(
    ["PublicIP", "publicip", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]
)
_values = _json | st.sampled_from(["10.0.0.1", "fd00::1", "vxlan", "0a:00:00:00:00:01"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_fields, _values, max_size=5) | _json)
def test_fuzzed_lease_values_decode_or_raise_lease_decode_error_only(doc):
    try:
        attrs = LeaseAttrs.from_json(json.dumps(doc))
    except LeaseDecodeError:
        return
    # Whatever decodes re-encodes to something that decodes to the same attributes.
    assert LeaseAttrs.from_json(attrs.to_json()) == attrs


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_fuzzed_lease_bytes_decode_or_raise_lease_decode_error_only(raw):
    with contextlib.suppress(LeaseDecodeError):
        LeaseAttrs.from_json(raw)


def test_numeric_public_ip_is_rejected_like_go():
    with pytest.raises(LeaseDecodeError):
        LeaseAttrs.from_json('{"PublicIP":5}')


def test_decoded_leases_share_their_repeated_strings():
    def decode(mac: str) -> LeaseAttrs:
        value = {"PublicIP": "198.18.0.2", "BackendType": "vxlan",
                 "BackendData": {"VNI": 1, "VtepMAC": mac}}  # fmt: skip
        return LeaseAttrs.from_json(json.dumps(value))

    a, b = decode("0e:00:00:00:00:01"), decode("0e:00:00:00:00:02")
    assert a.backend_type is b.backend_type
    assert a.backend_data and b.backend_data
    assert [x for x in a.backend_data] == ["VNI", "VtepMAC"]
    assert all(x is y for x, y in zip(a.backend_data, b.backend_data, strict=True))
    assert (a.vtep_mac, b.vtep_mac) == ("0e:00:00:00:00:01", "0e:00:00:00:00:02")
    assert LeaseAttrs.from_json(a.to_json()) == a
