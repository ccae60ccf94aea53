"""Zero-loss takeover of a node flanneld set up (README, "Migrating from flanneld").

The node's state is built exactly as flanneld leaves it (lease in Flannel's format
written with etcdctl, subnet.env, flannel.1 with its MAC, per-peer entries without
our route protocol), so this runs without the flanneld binary.  A pod on it pings a
pod on a flannelish peer every 10 ms while flannelish starts there with the same
flags: no ping may be lost, and the subnet, VTEP MAC and lease value (plus our NodeID,
which Flannel ignores) stay the same,
with one route, neighbour and FDB entry per peer afterwards (ours).
"""

from __future__ import annotations

import time
from ipaddress import IPv4Interface, IPv4Network

import pytest

from .drillkit import PingLoss
from .flanneldkit import (
    all_entries,
    flanneld_leaves_hostgw_node,
    flanneld_leaves_node,
    flanneld_programs_peer,
    lease_fields,
    lease_key,
    peer_routes,
)
from .helpers import DaemonProc, add_pod, wait_for

FLANNELD_SUBNET = IPv4Network("10.244.50.0/24")
FLANNELD_MAC = "5a:1e:0d:00:00:01"


def env_subnet(path) -> IPv4Network:
    env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return IPv4Interface(env["FLANNEL_SUBNET"]).network


def lease_of(etcd, subnet: IPv4Network) -> str:
    return etcd.etcdctl("get", "--print-value-only", lease_key(subnet)).stdout.strip()


@pytest.mark.slow
def test_takeover_of_a_flanneld_node_loses_no_ping(start_daemons, underlay, underlay_etcd,
                                                    netns_factory, tmp_path):  # fmt: skip
    [peer] = start_daemons(1)  # h1: a flannelish node
    node = underlay.add_host("h2")  # h2: the node flanneld ran
    subnet_file = tmp_path / "h2" / "subnet.env"
    value = flanneld_leaves_node(node, underlay_etcd, FLANNELD_SUBNET, FLANNELD_MAC, subnet_file)
    peer_mac = peer.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip()
    flanneld_programs_peer(node, peer.subnet, peer.host.ip, peer_mac)
    # A second peer that left etcd while flanneld was down: its entries are stale.
    flanneld_programs_peer(node, IPv4Network("10.244.99.0/24"), "198.18.0.99", "5a:1e:0d:00:00:99")
    pod_a = add_pod(netns_factory, node, FLANNELD_SUBNET, "pa", 1450)
    pod_b = add_pod(netns_factory, peer.host, peer.subnet, "pb", 1450)
    # The flannelish peer programs the flanneld node from its lease.
    wait_for(lambda: ("10.244.50.0/24", "10.244.50.0", "70") in peer_routes(peer.host),
             timeout=30, what="the peer's route to the flanneld node")  # fmt: skip
    before = all_entries(node)
    ours = (str(peer.subnet), str(peer.subnet.network_address), "70")
    assert (*ours[:2], "boot") in peer_routes(node)

    ping = PingLoss(pod_a, peer.subnet.network_address + 2, interval=0.01)
    ping.wait_first_reply()
    d = DaemonProc(node, underlay_etcd.client_url, tmp_path)
    d.subnet_file = subnet_file  # the file flanneld wrote, the same flags
    try:
        d.start()
        wait_for(lambda: ours in peer_routes(node), timeout=30, what="the route taken over")
        wait_for(lambda: len(all_entries(node)["neigh"]) == 1, 30, what="stale entries removed")
        time.sleep(2)  # and a few passes of the running daemon
        result = ping.stop()
    finally:
        if ping.proc.poll() is None:
            ping.stop(settle=0)
    print(f"takeover flanneld -> flannelish: {result}")
    assert result.lost == 0, f"{result}; daemon log:\n{d.log_tail()}"
    assert result.sent > 50
    # Same subnet, MAC and lease value; the device was adopted.
    assert d.subnet == FLANNELD_SUBNET
    assert node.run("cat", "/sys/class/net/flannel.1/address").stdout.strip() == FLANNELD_MAC
    # The same lease value; flannelish adds its NodeID, which Flannel ignores.
    assert lease_of(underlay_etcd, FLANNELD_SUBNET).startswith(value[:-1])
    assert lease_fields(lease_of(underlay_etcd, FLANNELD_SUBNET)) == lease_fields(value)
    # One entry per peer, ours: flanneld's route replaced in place, the stale peer's
    # neighbour and FDB entry gone (its route is foreign: left, and doctor names it).
    after = all_entries(node)
    assert after["neigh"] == [(str(peer.subnet.network_address), peer_mac)]
    assert after["fdb"] == [(peer_mac, str(peer.host.ip))]
    assert peer_routes(node) == sorted([ours, ("10.244.99.0/24", "10.244.99.0", "boot")])
    assert before["neigh"] != after["neigh"]
    # Both ways still work.
    back = PingLoss(pod_b, FLANNELD_SUBNET.network_address + 2)
    back.wait_first_reply()
    assert back.stop().lost == 0
    d.stop()


@pytest.mark.slow
def test_takeover_of_a_flanneld_host_gw_node_loses_no_ping(start_daemons, underlay,
                                                           underlay_etcd, netns_factory,
                                                           tmp_path):  # fmt: skip
    underlay_etcd.etcdctl("put", "/coreos.com/network/config",
                          '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')  # fmt: skip
    [peer] = start_daemons(1)
    node = underlay.add_host("h2")
    subnet_file = tmp_path / "h2" / "subnet.env"
    value = flanneld_leaves_hostgw_node(node, underlay_etcd, FLANNELD_SUBNET, subnet_file)
    node.run("ip", "route", "add", str(peer.subnet), "via", str(peer.host.ip), "dev", "eth0")
    pod_a = add_pod(netns_factory, node, FLANNELD_SUBNET, "pa", 1500)
    add_pod(netns_factory, peer.host, peer.subnet, "pb", 1500)
    wait_for(lambda: ("10.244.50.0/24", str(node.ip), "70") in peer_routes(peer.host),
             timeout=30, what="the peer's route to the flanneld node")  # fmt: skip
    ours = (str(peer.subnet), str(peer.host.ip), "70")
    ping = PingLoss(pod_a, peer.subnet.network_address + 2, interval=0.01)
    ping.wait_first_reply()
    d = DaemonProc(node, underlay_etcd.client_url, tmp_path)
    d.subnet_file = subnet_file
    try:
        d.start()
        wait_for(lambda: ours in peer_routes(node), timeout=30, what="the route taken over")
        time.sleep(2)
        result = ping.stop()
    finally:
        if ping.proc.poll() is None:
            ping.stop(settle=0)
        d.stop()
    print(f"host-gw takeover flanneld -> flannelish: {result}")
    assert result.lost == 0 and result.sent > 50, f"{result}\n{d.log_tail()}"
    assert peer_routes(node) == [ours]  # replaced in place: one route
    assert env_subnet(subnet_file) == FLANNELD_SUBNET
    assert lease_fields(lease_of(underlay_etcd, FLANNELD_SUBNET)) == lease_fields(value)
