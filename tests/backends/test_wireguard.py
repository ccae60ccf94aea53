"""The wireguard backend without root: options, admission, plans, the lease value,
the peer Resource against an in-memory UAPI device, driven by the real reconciler."""

from __future__ import annotations

import base64
import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from types import SimpleNamespace

import pytest
from flannelish.backends import get_backend_class
from flannelish.backends.base import BackendContext, ExternalInterface
from flannelish.backends.wireguard import WireguardBackend, WireguardOptions

from flannelish.daemon.reconciler import Reconciler
from flannelish.errors import ConfigError
from flannelish.kernel.wireguard import PeerStats, WgPeer, WgPeerResource, parse_get, sort_nets
from flannelish.kernel.wireguard_keys import NodeKey, b64_to_hex, hex_to_b64
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
    data: dict = {"PublicKey": pub or key(n)}
    if port is not None:
        data["Port"] = port
    return Lease(
        IPv4Network(f"10.244.{n}.0/24"),
        LeaseAttrs(IPv4Address(ip or f"198.18.0.{n}"), btype, data),
    )


def test_registry_knows_wireguard():
    assert get_backend_class("wireguard") is WireguardBackend


def test_options_defaults_and_keys_match_case_insensitively():
    o = WireguardOptions.parse({"Type": "wireguard"})
    assert (o.listen_port, o.listen_port_v6, o.mtu, o.mode, o.keepalive, o.psk) == (
        51820, 51821, None, "separate", 0, None
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


@pytest.mark.parametrize("mode", ["separate", "auto", "ipv4", "ipv6", "SEPARATE", "Auto"])
def test_every_mode_parses_on_a_dual_stack_network(mode):
    assert WireguardOptions.parse({"Mode": mode}, enable_ipv6=True).mode == mode.lower()


def test_mode_errors():
    with pytest.raises(ConfigError, match="needs EnableIPv6"):
        WireguardOptions.parse({"Mode": "ipv6"})
    with pytest.raises(ConfigError, match="IPv6-only"):
        WireguardOptions.parse({"Mode": "ipv4"}, enable_ipv6=True, enable_ipv4=False)
    with pytest.raises(ConfigError, match="must differ"):
        WireguardOptions.parse({"ListenPortV6": 51820}, enable_ipv6=True)
    # one device, one port: no clash
    assert WireguardOptions.parse({"ListenPortV6": 51820, "Mode": "auto"}, enable_ipv6=True)
    assert WireguardOptions.parse({"ListenPortV6": 51820})  # IPv4 only: one device


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
    assert b.validate(peer(2, port=70000)).kind == "wg-port"
    assert b.validate(peer(2, port=0)) is None  # Go: Port 0 is "not set", ours is meant
    assert b.validate(peer(2, port="51820")).kind == "wg-port"
    assert b.validate(peer(2, ip="198.18.0.1")).kind == "public-ip"
    assert b.claims(peer(2)) == (("wg-key", "flannel-wg", key(2)),)
    assert b.validate(peer(2, port=None)) is None  # Flannel < 0.26.6: no Port, ours is meant
    (obj,) = b.plan(peer(2, port=None))
    assert obj.endpoint == "198.18.0.2:51820"


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
                current.allowed_ips = sort_nets([*current.allowed_ips, ip_network(v)])
            elif k == "preshared_key":
                current.psk_hex = v
            elif k == "persistent_keepalive_interval":
                current.keepalive = int(v)


def wired(tmp_path, **backend):
    b = make(tmp_path, **backend)
    dev = FakeDevice()
    b._peers = WgPeerResource({"flannel-wg": dev}, b._psk_hex)
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

    # Keys as the daemon passes them (LeaseKey, not bare networks).
    def lookup(subnet):
        return {p.key: p for p in peers.values()}.get(subnet)

    # endpoint changed (per event)
    peers[2] = peer(2, ip="198.18.0.22")
    rec.apply_peers([peers[2].key], lookup)
    # subnet changed: same key, another lease; the new one first, then the old one goes
    old3 = peers.pop(3)
    moved = Lease(IPv4Network("10.244.30.0/24"), old3.attrs)
    peers[30] = moved
    rec.apply_peers([moved.key, old3.key], lookup)
    assert state(dev) == {
        key(2): ("198.18.0.22:51820", ("10.244.2.0/24",)),
        key(3): ("198.18.0.3:51820", ("10.244.30.0/24",)),
    }
    # removed
    gone = peers.pop(2)
    rec.apply_peers([gone.key], lambda s: None)
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
    assert p.allowed_ips == (IPv4Network("10.244.2.0/24"), IPv6Network("fd00::/64"))
    assert (p.last_handshake, p.rx_bytes, p.tx_bytes) == (1700000000.5, 200, 100)


def test_status_has_no_private_key(tmp_path):
    b, dev, rec = wired(tmp_path)
    b.devices[0].control = dev
    rec.reconcile([peer(2)])
    doc = b.status()
    assert "(private)" not in json.dumps(doc)
    assert doc["peers_without_handshake"] == 1 and doc["peers"][0]["allowed_ips"] == [
        "10.244.2.0/24"
    ]


# -- dual-stack and IPv6-only (Mode separate / auto / ipv4 / ipv6) ----------------------


def make6(tmp_path: Path, v4: bool = True, public4: str = "198.18.0.1", public6="fd18::1", **be):
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    ip4 = IPv4Address(public4 if v4 else "0.0.0.0")
    ext = ExternalInterface(
        "eth0", eth0.index, ip4, ip4, 1500, IPv6Address(public6), IPv6Address(public6)
    )
    network = SimpleNamespace(
        network=IPv4Network("10.244.0.0/16") if v4 else None,
        ipv6_network=IPv6Network("fd44::/48"),
        enable_ipv4=v4,
        enable_ipv6=True,
        backend={"Type": "wireguard", **be},
    )
    b = WireguardBackend(BackendContext(nl, ext, network, tmp_path))
    b.key = NodeKey("(private)", OWN, tmp_path / "wgkey")
    return b


def peer6(n: int, v4: bool = True, port=51820, port6=51821, ip4=None, ip6=None) -> Lease:
    return Lease(
        IPv4Network(f"10.244.{n}.0/24") if v4 else IPv4Network("0.0.0.0/0"),
        LeaseAttrs(
            IPv4Address(ip4 or (f"198.18.0.{n}" if v4 else "0.0.0.0")),
            "wireguard",
            {"PublicKey": key(n), "Port": port} if v4 else None,
            IPv6Address(ip6 or f"fd18::{n}"),
            {"PublicKey": key(n), "Port": port6},
        ),
        ipv6_subnet=IPv6Network(f"fd44:0:0:{n}::/64"),
    )


# Flannel's values (newSubnetAttrs in pkg/backend/wireguard/wireguard.go): one half per
# enabled family, the IPv4 half with ListenPort and the IPv6 half with ListenPortV6, in
# every mode; PublicIP "0.0.0.0" on an IPv6-only network.
DUAL_VALUE = (
    '{"PublicIP":"198.18.0.1","PublicIPv6":"fd18::1","BackendType":"wireguard",'
    f'"BackendData":{{"PublicKey":"{OWN}","Port":51820}},'
    f'"BackendV6Data":{{"PublicKey":"{OWN}","Port":51821}}}}'
)
V6ONLY_VALUE = (
    '{"PublicIP":"0.0.0.0","PublicIPv6":"fd18::1","BackendType":"wireguard",'
    f'"BackendV6Data":{{"PublicKey":"{OWN}","Port":51821}}}}'
)


@pytest.mark.parametrize("mode", ["separate", "auto", "ipv4", "ipv6"])
def test_dual_stack_lease_value_is_flannels_in_every_mode(tmp_path, mode):
    assert make6(tmp_path, Mode=mode).lease_attrs().to_json() == DUAL_VALUE
    custom = make6(tmp_path, Mode=mode, ListenPort=6000, ListenPortV6=6001).lease_attrs()
    assert custom.backend_data == {"PublicKey": OWN, "Port": 6000}
    assert custom.backend_v6_data == {"PublicKey": OWN, "Port": 6001}


@pytest.mark.parametrize("mode", ["separate", "auto", "ipv6"])
def test_ipv6_only_lease_value_is_flannels(tmp_path, mode):
    assert make6(tmp_path, v4=False, Mode=mode).lease_attrs().to_json() == V6ONLY_VALUE


def test_separate_has_two_devices_and_two_peers_per_node(tmp_path):
    b = make6(tmp_path, PSK=PSK)
    assert [(d.name, d.port, d.families) for d in b.devices] == [
        ("flannel-wg", 51820, (4,)),
        ("flannel-wg-v6", 51821, (6,)),
    ]
    assert b.mtu == 1420 and all(d.mtu == 1420 for d in b.devices)
    assert b.plan(peer6(2)) == (
        WgPeer("flannel-wg", key(2), "198.18.0.2:51820", (IPv4Network("10.244.2.0/24"),),
               "configured"),
        WgPeer("flannel-wg-v6", key(2), "[fd18::2]:51821", (IPv6Network("fd44:0:0:2::/64"),),
               "configured"),
    )  # fmt: skip
    assert b.claims(peer6(2)) == (
        ("wg-key", "flannel-wg", key(2)),
        ("wg-key", "flannel-wg-v6", key(2)),
    )
    # a peer's own ports, whatever ours are
    (_, v6) = b.plan(peer6(2, port6=7000))
    assert v6.endpoint == "[fd18::2]:7000"
    assert b.validate(peer6(2, ip6="fd18::1")).kind == "public-ip"


def test_ipv6_only_separate_is_flannel_wg_v6_alone(tmp_path):
    b = make6(tmp_path, v4=False)
    assert [(d.name, d.port, d.families) for d in b.devices] == [("flannel-wg-v6", 51821, (6,))]
    assert b.plan(peer6(2, v4=False)) == (
        WgPeer("flannel-wg-v6", key(2), "[fd18::2]:51821", (IPv6Network("fd44:0:0:2::/64"),)),
    )


def both(n: int) -> tuple:
    return (IPv4Network(f"10.244.{n}.0/24"), IPv6Network(f"fd44:0:0:{n}::/64"))


def test_single_device_modes_one_peer_with_both_subnets(tmp_path):
    for mode, endpoint in (
        ("ipv4", "198.18.0.2:51820"),
        ("ipv6", "[fd18::2]:51820"),  # the port of the peer's one device (see the docstring)
        ("auto", "198.18.0.2:51820"),  # 198.18.0.2 is not RFC 1918: Flannel picks IPv4
    ):
        b = make6(tmp_path, Mode=mode)
        assert [(d.name, d.port, d.families) for d in b.devices] == [("flannel-wg", 51820, (4, 6))]
        assert b.plan(peer6(2)) == (WgPeer("flannel-wg", key(2), endpoint, both(2)),), mode


def test_ipv6_only_single_device_listens_where_its_lease_points(tmp_path):
    b = make6(tmp_path, v4=False, Mode="ipv6")
    assert [(d.name, d.port, d.families) for d in b.devices] == [("flannel-wg", 51821, (6,))]
    assert b.plan(peer6(3, v4=False)) == (
        WgPeer("flannel-wg", key(3), "[fd18::3]:51821", (IPv6Network("fd44:0:0:3::/64"),)),
    )
    auto = make6(tmp_path, v4=False, Mode="auto")
    (obj,) = auto.plan(peer6(3, v4=False))
    assert obj.endpoint == "[fd18::3]:51821"


@pytest.mark.parametrize(
    "peer4, peer6_, our4, our6, want",
    [
        ("198.18.0.2", "fd18::2", "198.18.0.1", "fd18::1", 4),  # public IPv4: IPv4
        ("10.0.0.2", "2001:db8::2", "10.0.0.1", "2001:db8::1", 6),  # private v4, public v6
        ("10.0.0.2", "fd18::2", "10.0.0.1", "fd18::1", 4),  # both private: IPv4
        ("10.0.0.2", "2001:db8::2", "10.0.0.1", "fd18::1", 4),  # our IPv6 is private
        ("198.18.0.2", None, "198.18.0.1", "fd18::1", 4),  # no IPv6 offered
        ("0.0.0.0", "fd18::2", None, "fd18::1", 6),  # IPv6-only: the only common family
        ("198.18.0.2", "fd18::2", "198.18.0.1", None, 4),
        ("0.0.0.0", None, "198.18.0.1", "fd18::1", None),
    ],
)
def test_auto_family_is_flannels_rule(peer4, peer6_, our4, our6, want):
    from flannelish.backends.wireguard import auto_family

    def a4(x):
        return IPv4Address(x) if x else None

    def a6(x):
        return IPv6Address(x) if x else None

    assert auto_family(a4(peer4), a6(peer6_), a4(our4), a6(our6)) == want


def test_auto_picks_ipv6_per_peer_when_ipv4_is_private(tmp_path):
    b = make6(tmp_path, Mode="auto", public4="10.0.0.1", public6="2001:db8::1")
    (obj,) = b.plan(peer6(2, ip4="10.0.0.2", ip6="2001:db8::2"))
    assert obj.endpoint == "[2001:db8::2]:51820" and obj.allowed_ips == both(2)
    (obj,) = b.plan(peer6(3, ip4="198.18.0.3", ip6="2001:db8::3"))
    assert obj.endpoint == "198.18.0.3:51820"


def test_flannel_written_dual_stack_lease_is_programmed(tmp_path):
    """A dual-stack lease exactly as Flannel writes it, decoded and planned in each mode."""
    value = DUAL_VALUE.replace(OWN, key(5)).replace("198.18.0.1", "198.18.0.5")
    attrs = LeaseAttrs.from_json(value.replace("fd18::1", "fd18::5"))
    lease = Lease(IPv4Network("10.244.5.0/24"), attrs, ipv6_subnet=IPv6Network("fd44:0:0:5::/64"))
    sep = make6(tmp_path).plan(lease)
    assert [(p.dev, p.endpoint) for p in sep] == [
        ("flannel-wg", "198.18.0.5:51820"),
        ("flannel-wg-v6", "[fd18::5]:51821"),
    ]
    (one,) = make6(tmp_path, Mode="ipv6").plan(lease)
    assert (one.dev, one.endpoint, one.allowed_ips) == ("flannel-wg", "[fd18::5]:51820", both(5))


def test_separate_reconciles_both_devices(tmp_path):
    b = make6(tmp_path)
    dev4, dev6 = FakeDevice(), FakeDevice()
    b._peers = WgPeerResource({"flannel-wg": dev4, "flannel-wg-v6": dev6}, None)
    b.ensure_base = lambda: False
    rec = Reconciler([b])
    rec.reconcile([peer6(2), peer6(3)])
    assert state(dev4) == {
        key(2): ("198.18.0.2:51820", ("10.244.2.0/24",)),
        key(3): ("198.18.0.3:51820", ("10.244.3.0/24",)),
    }
    assert state(dev6) == {
        key(2): ("[fd18::2]:51821", ("fd44:0:0:2::/64",)),
        key(3): ("[fd18::3]:51821", ("fd44:0:0:3::/64",)),
    }
    dev6.peers.pop(key(3))  # removed by hand from flannel-wg-v6 only
    assert b._peers.drifted()
    assert rec.reconcile([peer6(2), peer6(3)]).changes == 1
    assert key(3) in dev6.peers and not b._peers.drifted()
    rec.reconcile([peer6(2)])  # node 3 leaves: gone from both devices
    assert set(state(dev4)) == set(state(dev6)) == {key(2)}
