"""Node identity: a restarting host keeps its lease, a second host with its PublicIP is refused."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.daemon.identity import load_or_create
from flannelish.daemon.node import DaemonOptions, NodeDaemon
from flannelish.errors import ConfigError, DuplicateNodeError, ExitCode, exit_code_for
from flannelish.subnet.lease import LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.testing.registry import InMemoryRegistry

from .test_node_wiring import CONFIG, Running, fake_kernel

pytestmark = pytest.mark.unit

A, B = "a" * 32, "b" * 32
IP = IPv4Address("198.18.0.1")


def attrs(node_id: str | None) -> LeaseAttrs:
    return LeaseAttrs(IP, "vxlan", {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}, node_id=node_id)


@pytest.fixture
def manager():
    registry = InMemoryRegistry()
    registry.put_config(CONFIG)
    return SubnetManager(registry)


def test_node_id_rides_last_in_the_lease_value_and_flannel_values_are_unchanged():
    raw = attrs(A).to_json()
    assert raw.endswith(f',"NodeID":"{A}"}}') and LeaseAttrs.from_json(raw).node_id == A
    flannel = '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"host-gw"}'
    assert LeaseAttrs.from_json(flannel).to_json() == flannel
    for junk in ('"x"', "5", '"' + "A" * 32 + '"', '"' + "a" * 33 + '"'):
        value = json.loads(raw)
        value["NodeID"] = json.loads(junk)
        assert LeaseAttrs.from_json(json.dumps(value)).node_id is None


def test_the_same_node_restarting_keeps_its_lease(manager):
    first = manager.acquire(attrs(A))
    assert manager.acquire(attrs(A)).subnet == first.subnet


def test_a_second_host_with_the_same_public_ip_is_refused_with_exit_status_3(manager):
    held = manager.acquire(attrs(A))
    with pytest.raises(DuplicateNodeError) as caught:
        manager.acquire(attrs(B))
    assert str(held.subnet) in str(caught.value) and "another node" in str(caught.value)
    assert exit_code_for(caught.value) == ExitCode.CONFIG
    assert [lease.attrs.node_id for lease in manager.list_leases()] == [A]  # untouched


def test_a_lease_without_an_id_flanneld_or_older_is_reused_and_gets_ours(manager):
    old = manager.acquire(attrs(None))
    assert manager.acquire(attrs(B)).subnet == old.subnet
    assert [lease.attrs.node_id for lease in manager.list_leases()] == [B]


def test_identity_file_is_created_once_and_a_corrupt_one_is_an_error(tmp_path):
    node_id = load_or_create(tmp_path)
    assert load_or_create(tmp_path) == node_id and len(node_id) == 32
    (tmp_path / "node-id").write_text("not-an-id\n")
    with pytest.raises(ConfigError, match="does not hold a node ID"):
        load_or_create(tmp_path)
    assert (tmp_path / "node-id").read_text() == "not-an-id\n"  # never silently replaced


def test_the_daemon_advertises_its_id_and_a_clone_does_not_start(tmp_path, manager):
    registry = manager.registry
    with Running(tmp_path / "one", registry, fake_kernel()) as node:
        lease = node.status.lease
        assert lease.attrs.node_id == (tmp_path / "one" / "node-id").read_text().strip()
    clone = NodeDaemon(
        DaemonOptions(etcd=None, subnet_file=tmp_path / "two" / "subnet.env"),
        fake_kernel(),  # same address 198.18.0.1, another state directory
        SubnetManager(registry),
        kernel_notifications=False,
    )
    with pytest.raises(DuplicateNodeError):
        clone.run()
    assert IPv4Network(lease.subnet) == manager.list_leases()[0].subnet
