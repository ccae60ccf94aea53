"""Lease JSON is byte-compatible with Flannel (flannel.md §1.4, §9 vector 7)."""

from ipaddress import IPv4Address

import pytest

from flannelish.subnet.lease import LeaseAttrs, LeaseDecodeError

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
