"""The wireguard backend in dual-stack and IPv6-only networks, on real namespaces.

Real etcd, real daemons, wireguard-go per device (no kernel module here), a
dual-stack underlay (198.18.0.0/24 and fd18::/64).  Each Mode is proven by pods
pinging each other over both families and by a capture on the underlay bridge:
between nodes only UDP between the WireGuard ports crosses, in the family the
Mode says, and no pod payload is readable in any frame.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from flannelish.testing.etcd import EtcdMember
from flannelish.testing.underlay import Underlay

from .conftest import PREFIX, daemon_starter
from .helpers import ping, wait_for
from .test_daemon_ipv6 import add_pod6, etcd6, subnet6, underlay6  # noqa: F401 (fixtures)
from .wgkit import WgDaemon, peers_of

MTU = 1420


def dual(mode: str | None) -> str:
    backend = {"Type": "wireguard", **({"Mode": mode} if mode else {})}
    return json.dumps(
        {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd44::/48",
         "IPv6SubnetLen": 64, "Backend": backend}, separators=(",", ":"),
    )  # fmt: skip


def v6only(mode: str | None) -> str:
    backend = {"Type": "wireguard", **({"Mode": mode} if mode else {})}
    return json.dumps(
        {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd44::/48",
         "IPv6SubnetLen": 64, "Backend": backend}, separators=(",", ":"),
    )  # fmt: skip


@pytest.fixture
def wg6(underlay6: Underlay, etcd6: EtcdMember, tmp_path) -> Iterator[Callable[..., list]]:  # noqa: F811
    """wg6(n, config) -> n ready WireGuard daemons on the IPv6 underlay."""
    made: list[WgDaemon] = []

    def make(*args: object) -> WgDaemon:
        made.append(WgDaemon(*args))
        return made[-1]

    try:
        with contextmanager(daemon_starter)(underlay6, etcd6, tmp_path, None, make) as started:
            yield lambda n, config: started(n, config=config)
    finally:
        for d in made:  # after the starter stopped the daemons: their wireguard-go too
            d.kill_wireguard_go()


def pods(factory, daemons: list[WgDaemon]) -> list[str]:
    return [add_pod6(factory, d.host, d, f"w{i}", MTU) for i, d in enumerate(daemons)]


def pod_ips(d: WgDaemon) -> list:
    """The pod's addresses (<subnet>.2, <v6 subnet>::2), IPv4 first when there is one."""
    out = []
    if "FLANNEL_SUBNET" in d.env():
        out.append(IPv4Interface(d.env()["FLANNEL_SUBNET"]).network.network_address + 2)
    out.append(subnet6(d).network_address + 2)
    return out


SECRET = "5ec7e75ec7e75ec7e75ec7e75ec7e75e"  # ping -p pattern: must never be readable


@contextmanager
def capture(underlay: Underlay, pcap: Path) -> Iterator[None]:
    dump = subprocess.Popen(
        ["ip", "netns", "exec", underlay.netns, "tcpdump", "-i", underlay.bridge, "-U", "-n",
         "-w", str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # tcpdump is listening
        yield
        time.sleep(0.3)
    finally:
        dump.terminate()
        dump.wait(timeout=10)


def ping_all(pod_ns: list[str], daemons: list[WgDaemon]) -> None:
    """Every pod pings every other node's pod on every family, with the secret pattern."""
    for i, ns in enumerate(pod_ns):
        for j, d in enumerate(daemons):
            if i == j:
                continue
            for ip in pod_ips(d):
                ok = lambda ns=ns, ip=ip: subprocess.run(  # noqa: E731
                    ["ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "2",
                     "-s", "200", "-p", SECRET, str(ip)], capture_output=True, timeout=30,
                ).returncode == 0  # fmt: skip
                wait_for(ok, 15, 0.2, what=f"{ns} -> {ip}")


def underlay_flows(pcap: Path, daemons: list[WgDaemon]) -> Counter:
    """(IP version, UDP port) of every frame between two nodes; fails on anything else."""
    from scapy.all import IP, UDP, IPv6, rdpcap
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS

    nodes = {str(d.host.ip) for d in daemons} | {str(d.host.ip6) for d in daemons}
    secret = bytes.fromhex(SECRET)
    seen: Counter = Counter()
    for pkt in rdpcap(str(pcap)):
        assert secret not in bytes(pkt), f"pod payload readable on the underlay: {pkt.summary()}"
        l3 = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if l3 is None or l3.src not in nodes or l3.dst not in nodes:
            continue  # ARP, etcd on the gateway, multicast neighbour solicitations
        if ICMPv6ND_NS in pkt or ICMPv6ND_NA in pkt:
            continue  # the underlay's own neighbour discovery
        assert UDP in pkt, f"not UDP between nodes: {pkt.summary()}"
        sport, dport = pkt[UDP].sport, pkt[UDP].dport
        assert sport == dport, f"WireGuard talks from its listen port: {pkt.summary()}"
        seen[(l3.version, dport)] += 1
    return seen


def lease_values(etcd: EtcdMember) -> list[dict]:
    out = etcd.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "--print-value-only").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_dual_stack_separate_two_devices(wg6, underlay6, etcd6, netns_factory, tmp_path):  # noqa: F811
    daemons = wg6(3, dual(None))  # no Mode: Flannel's default, separate
    d0 = daemons[0]
    assert d0.env()["FLANNEL_MTU"] == str(MTU)
    key = (d0.dir / "flannel-wg.pubkey").read_text().strip()
    # The lease value, byte for byte as Flannel writes it (NodeID, our addition, last).
    mine = [v for v in lease_values(etcd6) if v["PublicIP"] == str(d0.host.ip)]
    raw = json.dumps(mine[0], separators=(",", ":"))
    assert raw.startswith(
        f'{{"PublicIP":"{d0.host.ip}","PublicIPv6":"{d0.host.ip6}","BackendType":"wireguard",'
        f'"BackendData":{{"PublicKey":"{key}","Port":51820}},'
        f'"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}'
    ), raw
    keys = {d.host.name: (d.dir / "flannel-wg.pubkey").read_text().strip() for d in daemons}
    for d in daemons:
        others = [x for x in daemons if x is not d]
        want4 = {keys[x.host.name]: (f"{x.host.ip}:51820", (str(pod_ips(x)[0] - 2) + "/24",))
                 for x in others}  # fmt: skip
        want6 = {keys[x.host.name]: (f"[{x.host.ip6}]:51821", (str(subnet6(x)),)) for x in others}
        wait_for(lambda d=d, w=want4: peers_of(d) == w, 10, what="IPv4 peers on flannel-wg")
        wait_for(lambda d=d, w=want6: peers_of(d, "flannel-wg-v6") == w, 10, what="IPv6 peers")
        assert d.uapi("flannel-wg-v6").get().listen_port == 51821
        routes6 = d.host.run("ip", "-6", "route", "show", "proto", "70").stdout
        assert "fd44::/48 dev flannel-wg-v6" in routes6, routes6
        addrs6 = d.host.run("ip", "-6", "-o", "addr", "show", "dev", "flannel-wg-v6").stdout
        assert f"{subnet6(d).network_address}/128" in addrs6
        assert "10.244.0.0/16 dev flannel-wg" in d.host.run("ip", "route").stdout
        assert "interface: flannel-wg-v6" in d.wg("show", dev="flannel-wg-v6")
    pod_ns = pods(netns_factory, daemons)
    pcap = tmp_path / "separate.pcap"
    with capture(underlay6, pcap):
        ping_all(pod_ns, daemons)
    seen = underlay_flows(pcap, daemons)
    assert set(seen) == {(4, 51820), (6, 51821)}, seen  # IPv4 over v4, IPv6 over v6
    for d in daemons:  # every node has a handshake with every peer on both devices
        for dev in ("flannel-wg", "flannel-wg-v6"):
            assert all(p.last_handshake > 0 for p in d.uapi(dev).get().peers), (d.host.name, dev)

    # Drift on the IPv6 device: a peer removed by hand is back within 1 s.
    victim = keys["h2"]
    d0.wg("set", "flannel-wg-v6", "peer", victim, "remove", dev="flannel-wg-v6")
    assert victim not in peers_of(d0, "flannel-wg-v6")
    wait_for(lambda: victim in peers_of(d0, "flannel-wg-v6"), 1.0, 0.01, what="v6 peer back")
    assert victim in peers_of(d0)  # the IPv4 device was never touched
    # Its wireguard-go killed: restarted, reprogrammed; the IPv4 device's keeps running.
    old6, old4 = d0.wggo_pid("flannel-wg-v6"), d0.wggo_pid()
    assert old6 is not None
    os.kill(old6, 9)
    wait_for(lambda: d0.wggo_pid("flannel-wg-v6") not in (None, old6), 5, what="v6 restarted")
    wait_for(lambda: len(peers_of(d0, "flannel-wg-v6")) == 2, 5, what="v6 peers replayed")
    assert d0.wggo_pid() == old4
    v6_target = pod_ips(daemons[1])[1]
    wait_for(lambda: ping(pod_ns[0], v6_target), 10, 0.2, what="IPv6 ping after restart")
    # The device deleted by hand: rebuilt with its address and route.
    old6 = d0.wggo_pid("flannel-wg-v6")
    d0.host.run("ip", "link", "del", "flannel-wg-v6")
    wait_for(lambda: d0.wggo_pid("flannel-wg-v6") not in (None, old6), 5, what="v6 rebuilt")
    wait_for(lambda: ping(pod_ns[0], pod_ips(daemons[2])[1]), 10, 0.2, what="IPv6 ping")
    assert "fd44::/48 dev flannel-wg-v6" in d0.host.run("ip", "-6", "route").stdout

    # A daemon restart loses no IPv6 ping and keeps the key.
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", pod_ns[0], "ping", "-c", "40", "-i", "0.1", "-W", "1",
         str(v6_target)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    d0.stop()
    d0.start()
    d0.wait_ready()
    out, _ = pinger.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert (d0.dir / "flannel-wg.pubkey").read_text().strip() == key


@pytest.mark.parametrize(
    "mode, family, port",
    [
        ("auto", 4, 51820),  # 198.18.0.x is not RFC 1918: Flannel's rule picks IPv4
        ("ipv6", 6, 51820),  # both families over the IPv6 underlay
        ("ipv4", 4, 51820),
    ],
)
def test_dual_stack_one_device(wg6, underlay6, netns_factory, tmp_path, mode, family, port):  # noqa: F811
    daemons = wg6(2, dual(mode))
    a, b = daemons
    assert "flannel-wg-v6" not in a.host.run("ip", "link").stdout
    key_b = (b.dir / "flannel-wg.pubkey").read_text().strip()
    endpoint = f"{b.host.ip}:51820" if family == 4 else f"[{b.host.ip6}]:51820"
    v4 = str(pod_ips(b)[0] - 2) + "/24"
    want = {key_b: (endpoint, (v4, str(subnet6(b))))}
    wait_for(lambda: peers_of(a) == want, 10, what="one peer with both subnets")
    routes = a.host.run("ip", "-6", "route", "show", "proto", "70").stdout
    assert "fd44::/48 dev flannel-wg " in routes, routes
    pod_ns = pods(netns_factory, daemons)
    pcap = tmp_path / f"{mode}.pcap"
    with capture(underlay6, pcap):
        ping_all(pod_ns, daemons)
    seen = underlay_flows(pcap, daemons)
    assert set(seen) == {(family, port)}, seen
    # Drift repair holds on the one device carrying both families.
    a.wg("set", "flannel-wg", "peer", key_b, "remove")
    wait_for(lambda: peers_of(a) == want, 1.0, 0.01, what="peer back")


@pytest.mark.parametrize("mode, dev", [(None, "flannel-wg-v6"), ("ipv6", "flannel-wg")])
def test_ipv6_only(wg6, underlay6, etcd6, netns_factory, tmp_path, mode, dev):  # noqa: F811
    daemons = wg6(2, v6only(mode))
    a, b = daemons
    assert "FLANNEL_SUBNET" not in a.env() and a.env()["FLANNEL_MTU"] == str(MTU)
    assert [x.strip(": ") for x in a.host.run("ip", "-o", "link").stdout.split()
            if x.startswith("flannel")] == [dev]  # fmt: skip
    value = lease_values(etcd6)[0]
    assert value["PublicIP"] == "0.0.0.0" and "BackendData" not in value
    assert value["BackendV6Data"]["Port"] == 51821
    key_b = (b.dir / "flannel-wg.pubkey").read_text().strip()
    want = {key_b: (f"[{b.host.ip6}]:51821", (str(subnet6(b)),))}
    wait_for(lambda: peers_of(a, dev) == want, 10, what="IPv6 peer")
    assert a.uapi(dev).get().listen_port == 51821  # where our lease says we are
    pod_ns = pods(netns_factory, daemons)
    pcap = tmp_path / "v6only.pcap"
    with capture(underlay6, pcap):
        ping_all(pod_ns, daemons)
    assert set(underlay_flows(pcap, daemons)) == {(6, 51821)}
