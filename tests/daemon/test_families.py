"""daemon/families.py: per-family admission rules, subnet.env and the status report."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import SimpleNamespace

import pytest

from flannelish.daemon.families import family_counts, family_report, subnet_env
from flannelish.kernel.netlink import AF_INET, AF_INET6
from flannelish.subnet.config import parse_network_config
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Lease, LeaseAttrs

pytestmark = pytest.mark.unit

DUAL = parse_network_config(
    '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":64}'
)
V6ONLY = parse_network_config(
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":64}'
)


def test_subnet_env_vector_dual_stack_as_flannel_writes_it():
    key = LeaseKey(IPv4Network("10.5.34.0/24"), IPv6Network("fd00:0:0:22::/64"))
    assert subnet_env(DUAL, key, 1430, True).render() == (
        "FLANNEL_NETWORK=10.5.0.0/16\n"
        "FLANNEL_SUBNET=10.5.34.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00::/56\n"
        "FLANNEL_IPV6_SUBNET=fd00:0:0:22::1/64\n"
        "FLANNEL_MTU=1430\n"
        "FLANNEL_IPMASQ=true\n"
    )
    assert key.etcd == "10.5.34.0-24&fd00:0:0:22::-64"


def test_subnet_env_ipv6_only_has_no_ipv4_lines():
    key = LeaseKey(None, IPv6Network("fd00:0:0:22::/64"))
    assert subnet_env(V6ONLY, key, 1430, False).render() == (
        "FLANNEL_IPV6_NETWORK=fd00::/56\n"
        "FLANNEL_IPV6_SUBNET=fd00:0:0:22::1/64\n"
        "FLANNEL_MTU=1430\n"
        "FLANNEL_IPMASQ=false\n"
    )
    assert key.etcd == "0.0.0.0-0&fd00:0:0:22::-64"


def test_family_report_counts_programmed_peers_per_family():
    def lease(v4: str, v6: str | None) -> Lease:
        attrs = LeaseAttrs(IPv4Address("198.18.0.1"), "vxlan", public_ipv6=IPv6Address("fd18::1"))
        return Lease(IPv4Network(v4), attrs, ipv6_subnet=IPv6Network(v6) if v6 else None)

    own = lease("10.5.1.0/24", "fd00:0:0:1::/64")
    peers = [lease("10.5.2.0/24", "fd00:0:0:2::/64"), lease("10.5.3.0/24", "fd00:0:0:3::/64")]
    backend = SimpleNamespace(devices=[
        SimpleNamespace(name="flannel.1", family=AF_INET, mtu=1450, mac="0e:00:00:00:00:04"),
        SimpleNamespace(name="flannel-v6.1", family=AF_INET6, mtu=1430, mac="0e:00:00:00:00:06"),
    ])  # fmt: skip
    by_family, devices, v6, details = family_report(
        backend, DUAL, own, family_counts(p.key for p in peers[:1])
    )
    assert by_family == {"ipv4": 1, "ipv6": 1}
    assert details == {
        "ipv4": {"subnet": "10.5.1.0/24", "network": "10.5.0.0/16", "public_ip": "198.18.0.1",
                 "device": "flannel.1", "mtu": 1450, "vtep_mac": "0e:00:00:00:00:04",
                 "peers": 1},
        "ipv6": {"subnet": "fd00:0:0:1::/64", "network": "fd00::/56", "public_ip": "fd18::1",
                 "device": "flannel-v6.1", "mtu": 1430, "vtep_mac": "0e:00:00:00:00:06",
                 "peers": 1},
    }  # fmt: skip
    by_family, devices, v6, _ = family_report(
        backend, DUAL, own, family_counts(p.key for p in peers)
    )
    assert by_family == {"ipv4": 2, "ipv6": 2}
    assert devices == ["flannel.1", "flannel-v6.1"]
    assert v6 == {"ipv6_subnet": "fd00:0:0:1::/64", "ipv6_network": "fd00::/56",
                  "public_ipv6": "fd18::1"}  # fmt: skip


def test_family_report_of_an_ipv6_only_host_gw_node():
    """No device per family (host-gw): the backend's MTU; no IPv4 entry at all."""
    attrs = LeaseAttrs(IPv4Address("0.0.0.0"), "host-gw", public_ipv6=IPv6Address("fd18::1"))
    own = Lease(IPv4Network("0.0.0.0/0"), attrs, ipv6_subnet=IPv6Network("fd00:0:0:22::/64"))
    backend = SimpleNamespace(mtu=1500)
    by_family, devices, _, details = family_report(backend, V6ONLY, own, (0, 0))
    assert by_family == {"ipv6": 0} and devices == []
    assert details == {"ipv6": {"subnet": "fd00:0:0:22::/64", "network": "fd00::/56",
                                "public_ip": "fd18::1", "device": None, "mtu": 1500,
                                "vtep_mac": None, "peers": 0}}  # fmt: skip


def test_family_report_names_a_wireguard_device_carrying_both_families():
    """WireGuard's one `flannel-wg` (Mode auto/ipv4/ipv6) carries both families."""
    attrs = LeaseAttrs(IPv4Address("198.18.0.1"), "wireguard", public_ipv6=IPv6Address("fd18::1"))
    own = Lease(IPv4Network("10.5.1.0/24"), attrs, ipv6_subnet=IPv6Network("fd00:0:0:1::/64"))
    backend = SimpleNamespace(devices=[SimpleNamespace(name="flannel-wg", families=(4, 6),
                                                       mtu=1420)])  # fmt: skip
    _, _, _, details = family_report(backend, DUAL, own, (0, 0))
    assert [(d["device"], d["mtu"], d["vtep_mac"]) for d in details.values()] == [
        ("flannel-wg", 1420, None), ("flannel-wg", 1420, None),
    ]  # fmt: skip
