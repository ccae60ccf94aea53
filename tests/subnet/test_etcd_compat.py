"""Wire compatibility with Flannel: data written with etcdctl is read, and what we write
is Flannel's exact format (docs/flannel-compat.md §1, §3; examples 6 and 7 of §13)."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network

import pytest
from lease_helpers import grant, key_json

from flannelish.subnet.lease import LeaseAttrs
from flannelish.subnet.manager import SubnetManager

pytestmark = pytest.mark.etcd

VECTOR7 = (
    '{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}}'
)


def test_flannel_config_and_leases_written_with_etcdctl_are_read(etcd, registries):
    etcd.etcdctl(
        "put",
        "/coreos.com/network/config",
        '{"network":"10.5.0.0/16","backend":{"type":"VXLAN","vni":4}}',
    )
    lease_hex = grant(etcd, 600)
    etcd.etcdctl("put", f"--lease={lease_hex}", "/coreos.com/network/subnets/10.5.7.0-24", VECTOR7)
    etcd.etcdctl(
        "put",
        "/coreos.com/network/subnets/10.5.8.0-24",
        '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}',
    )
    etcd.etcdctl("put", "/coreos.com/network/subnets/foo", "{}")  # not a lease key: skipped
    etcd.etcdctl("put", "/coreos.com/network/subnets/10.5.9.0-24", "garbage")  # bad node: skipped
    manager = SubnetManager(registries(etcd.client_url))

    config = manager.get_network_config(wait=False)
    assert config is not None and config.backend_type == "vxlan" and config.backend["vni"] == 4

    leases = {str(x.subnet): x for x in manager.list_leases()}
    assert sorted(leases) == ["10.5.7.0/24", "10.5.8.0/24"]
    leased = leases["10.5.7.0/24"]
    assert leased.attrs.public_ip == IPv4Address("192.168.1.10")
    assert leased.attrs.vtep_mac == "0a:58:0a:f4:01:01"
    assert leased.lease_id == int(lease_hex, 16)
    assert leased.expiration is not None and 590 < leased.expiration - time.time() <= 600
    reserved = leases["10.5.8.0/24"]
    assert reserved.reserved and reserved.expiration is None
    assert reserved.attrs.backend_type == "host-gw"


def test_our_lease_is_flannels_exact_bytes_under_flannels_key_with_a_24h_lease(etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(
        b'{"Network":"192.168.0.0/16","SubnetMin":"192.168.34.0","SubnetMax":"192.168.34.0"}'
    )
    attrs = LeaseAttrs.from_json(VECTOR7)
    lease = SubnetManager(registry).acquire(attrs)
    assert lease.subnet == IPv4Network("192.168.34.0/24")
    stored = key_json(etcd, "/coreos.com/network/subnets/192.168.34.0-24")
    assert stored["value"] == VECTOR7
    assert stored["lease"] == lease.lease_id != 0
    ttl = etcd.etcdctl("lease", "timetolive", f"{lease.lease_id:x}").stdout
    remaining = int(ttl.split("remaining(")[1].split("s)")[0])
    assert 86390 <= remaining <= 86400


def test_custom_prefix_is_honoured(etcd, registries):
    registry = registries(etcd.client_url, prefix="/my/net/")
    registry.put_config(b'{"Network":"10.5.0.0/16"}')
    lease = SubnetManager(registry).acquire(LeaseAttrs(IPv4Address("198.18.0.1")))
    keys = etcd.etcdctl("get", "--prefix", "--keys-only", "/my/net").stdout.split()
    assert keys == ["/my/net/config", f"/my/net/subnets/{lease.subnet.network_address}-24"]
