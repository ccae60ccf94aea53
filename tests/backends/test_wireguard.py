"""The wireguard backend without root: options, admission, plans, the lease value,
the peer Resource against an in-memory UAPI device, driven by the real reconciler."""

from __future__ import annotations

import base64
import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from flannelish.backends import get_backend_class
from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.wireguard import WireguardBackend, WireguardOptions

from flannelish.daemon.reconciler import Reconciler
from flannelish.errors import ConfigError
from flannelish.kernel.wireguard import (
    NodeKey,
    PeerStats,
    WgPeer,
    WgPeerResource,
    b64_to_hex,
    hex_to_b64,
    parse_get,
)
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


OWN = key(1)
PSK = key(9)


def net(**backend) -> SimpleNamespace:
    return SimpleNamespace(
        network=IPv4Network("10.244.0.0/16"),
        enable_ipv6=backend.pop("enable_ipv6", False),
        backend={"Type": "wireguard", **backend},
    )


def make(tmp_path: Path, **backend) -> WireguardBackend:
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    ext = ExternalInterface(
        "eth0", eth0.index, IPv4Address("198.18.0.1"), IPv4Address("198.18.0.1"), 1500
    )
    b = WireguardBackend(BackendContext(nl, ext, net(**backend), tmp_path))
    b.key = NodeKey("(private)", OWN, tmp_path / "wgkey")
    return b


def peer(n: int, pub: str | None = None, port=51820, ip: str | None = None, btype="wireguard"):
    data = {"PublicKey": pub or key(n), "Port": port}
    return Lease(
        IPv4Network(f"10.244.{n}.0/24"),
        LeaseAttrs(IPv4Address(ip or f"198.18.0.{n}"), btype, data),
    )


def test_registry_knows_wireguard():
    assert get_backend_class("wireguard") is WireguardBackend


def test_options_defaults_and_keys_match_case_insensitively():
    o = WireguardOptions.parse({"Type": "wireguard"})
    assert (o.listen_port, o.listen_port_v6, o.mtu, o.mode, o.keepalive, o.psk) == (
        51820, 51821, None, "ipv4", 0, None
    )  # fmt: skip
    o = WireguardOptions.parse(
        {"psk": PSK, "LISTENPORT": 5000, "MTU": 1400, "PersistentKeepaliveInterval": 25}
    )
    assert (o.psk, o.listen_port, o.mtu, o.keepalive) == (PSK, 5000, 1400, 25)


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"PSK": "short"}, "PSK"),
        ({"ListenPort": 0}, "ListenPort"),
        ({"ListenPort": "51820"}, "ListenPort"),
        ({"ListenPortV6": 70000}, "ListenPortV6"),
        ({"MTU": 100}, "MTU"),
        ({"Mode": "tunnel"}, "Mode"),
        ({"PersistentKeepaliveInterval": -1}, "PersistentKeepaliveInterval"),
    ],
)
def test_invalid_options_are_config_errors(raw, needle):
    with pytest.raises(ConfigError) as err:
        WireguardOptions.parse(raw)
    assert needle in str(err.value)


@pytest.mark.parametrize("mode", ["separate", "ipv6", "SEPARATE"])
def test_ipv6_modes_are_a_clear_error_until_ipv6_lands(mode):
    with pytest.raises(ConfigError) as err:
        WireguardOptions.parse({"Mode": mode})
    assert "IPv6" in str(err.value)


def test_auto_is_ipv4_on_an_ipv4_network_and_an_error_with_ipv6():
    assert WireguardOptions.parse({"Mode": "auto"}).mode == "ipv4"
    assert WireguardOptions.parse({"Mode": "ipv4"}).mode == "ipv4"
    with pytest.raises(ConfigError):
        WireguardOptions.parse({"Mode": "auto"}, enable_ipv6=True)


def test_mtu_is_underlay_minus_80(tmp_path):
    assert make(tmp_path).mtu == 1420
    assert make(tmp_path, MTU=9000).mtu == 8920


def test_lease_value_is_flannels(tmp_path):
    b = make(tmp_path, ListenPort=51999)
    value = b.lease_attrs().to_json()
    assert value == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"wireguard",'
        f'"BackendData":{{"PublicKey":"{OWN}","Port":51999}}}}'
    )
    assert "(private)" not in value and "(private)" not in repr(b.key)


def test_validate(tmp_path):
    b = make(tmp_path)
    assert b.validate(peer(2)) is None
    assert b.validate(peer(2, btype="vxlan")).kind == "backend-type"
    assert b.validate(peer(2, pub="bm90IGEga2V5")).kind == "wg-key"
    assert b.validate(peer(2, pub=OWN)).kind == "wg-key"
    assert b.validate(peer(2, port=0)).kind == "wg-port"
    assert b.validate(peer(2, port="51820")).kind == "wg-port"
    assert b.validate(peer(2, ip="198.18.0.1")).kind == "public-ip"
    assert b.claims(peer(2)) == (("wg-key", key(2)),)


def test_plan_one_peer_record(tmp_path):
    b = make(tmp_path, PSK=PSK, PersistentKeepaliveInterval=25)
    (obj,) = b.plan(peer(3, port=51830))
    assert obj == WgPeer(
        "flannel-wg", key(3), "198.18.0.3:51830", (IPv4Network("10.244.3.0/24"),), "configured", 25
    )
    assert PSK not in repr(obj)  # records are logged: the PSK is only a tag


class FakeDevice:
    """An in-memory wireguard-go UAPI: the records and the `set=1` semantics we use."""

    def __init__(self) -> None:
        self.peers: dict[str, PeerStats] = {}
        self.sets: list[list[str]] = []

    def get(self):
        from flannelish.kernel.wireguard import DeviceState

        return DeviceState("", 51820, [*self.peers.values()])

    def set(self, lines):
        self.sets.append(list(lines))
        current = None
        for line in lines:
            k, _, v = line.partition("=")
            if k == "public_key":
                b64 = hex_to_b64(v)
                current = self.peers.setdefault(b64, PeerStats(b64, "", (), 0.0, 0, 0))
            elif k == "remove":
                self.peers.pop(current.public_key)
            elif k == "endpoint":
                current.endpoint = v
            elif k == "replace_allowed_ips":
                current.allowed_ips = ()
            elif k == "allowed_ip":
                current.allowed_ips = tuple(sorted((*current.allowed_ips, IPv4Network(v))))
            elif k == "preshared_key":
                current.psk_hex = v
            elif k == "persistent_keepalive_interval":
                current.keepalive = int(v)


def wired(tmp_path, **backend):
    b = make(tmp_path, **backend)
    dev = FakeDevice()
    b._peers = WgPeerResource("flannel-wg", dev, b._psk_hex)
    b.ensure_base = lambda: False  # the device itself is tested on real namespaces
    return b, dev, Reconciler([b])


def state(dev):
    return {k: (p.endpoint, tuple(map(str, p.allowed_ips))) for k, p in dev.peers.items()}


def test_reconciler_programs_changes_and_removes_peers(tmp_path):
    _b, dev, rec = wired(tmp_path)
    peers = {2: peer(2), 3: peer(3)}
    rec.reconcile(list(peers.values()))
    assert state(dev) == {
        key(2): ("198.18.0.2:51820", ("10.244.2.0/24",)),
        key(3): ("198.18.0.3:51820", ("10.244.3.0/24",)),
    }

    def lookup(subnet):
        return {p.subnet: p for p in peers.values()}.get(subnet)

    # endpoint changed (per event)
    peers[2] = peer(2, ip="198.18.0.22")
    rec.apply_peers([peers[2].subnet], lookup)
    # subnet changed: same key, another lease; the new one first, then the old one goes
    moved = Lease(IPv4Network("10.244.30.0/24"), peers.pop(3).attrs)
    peers[30] = moved
    rec.apply_peers([moved.subnet, IPv4Network("10.244.3.0/24")], lookup)
    assert state(dev) == {
        key(2): ("198.18.0.22:51820", ("10.244.2.0/24",)),
        key(3): ("198.18.0.3:51820", ("10.244.30.0/24",)),
    }
    # removed
    del peers[2]
    rec.apply_peers([IPv4Network("10.244.2.0/24")], lambda s: None)
    assert set(state(dev)) == {key(3)}


def test_drift_is_seen_and_repaired_by_the_full_pass(tmp_path):
    b, dev, rec = wired(tmp_path, PSK=PSK)
    peers = [peer(2), peer(3)]
    rec.reconcile(peers)
    assert not b._peers.drifted()
    assert dev.peers[key(2)].psk_hex == b64_to_hex(PSK)
    dev.peers.pop(key(2))  # `wg set flannel-wg peer K remove` by hand
    assert b._peers.drifted()
    dev.peers[key(3)].allowed_ips = (IPv4Network("10.244.99.0/24"),)
    dev.peers[key(7)] = PeerStats(key(7), "198.18.0.7:1", (), 0.0, 0, 0)  # a stranger
    result = rec.reconcile(peers)
    assert result.changes == 3
    assert state(dev) == {
        key(2): ("198.18.0.2:51820", ("10.244.2.0/24",)),
        key(3): ("198.18.0.3:51820", ("10.244.3.0/24",)),
    }
    assert not b._peers.drifted()
    dev.peers[key(2)].endpoint = "203.0.113.5:4000"  # roaming is no drift
    assert not b._peers.drifted()


def test_parse_get():
    text = "\n".join(
        [
            "private_key=" + "a" * 64,
            "listen_port=51820",
            "public_key=" + "02" * 32,
            "preshared_key=" + "0" * 64,
            "protocol_version=1",
            "endpoint=198.18.0.2:51820",
            "last_handshake_time_sec=1700000000",
            "last_handshake_time_nsec=500000000",
            "tx_bytes=100",
            "rx_bytes=200",
            "persistent_keepalive_interval=0",
            "allowed_ip=10.244.2.0/24",
            "allowed_ip=fd00::/64",
        ]
    )
    s = parse_get(text)
    assert s.listen_port == 51820 and s.private_hex == "a" * 64
    (p,) = s.peers
    assert p.public_key == key(2) and p.endpoint == "198.18.0.2:51820"
    assert p.allowed_ips == (IPv4Network("10.244.2.0/24"),)
    assert (p.last_handshake, p.rx_bytes, p.tx_bytes) == (1700000000.5, 200, 100)


def test_status_has_no_private_key(tmp_path):
    b, dev, rec = wired(tmp_path)
    b.control = dev
    rec.reconcile([peer(2)])
    doc = b.status()
    assert "(private)" not in json.dumps(doc)
    assert doc["peers_without_handshake"] == 1 and doc["peers"][0]["allowed_ips"] == [
        "10.244.2.0/24"
    ]
