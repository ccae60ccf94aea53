"""The wireguard backend on real namespaces: wireguard-go per node, real etcd, real daemons.

Every node's daemon runs wireguard-go in a private mount namespace
(FLANNELISH_WG_PRIVATE_RUN=1), so three nodes on one machine each get their own
/run/wireguard; every wireguard-go is stopped by the PID in its pidfile.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flannelish.testing.etcd import EtcdMember
from flannelish.testing.proc import run
from flannelish.testing.underlay import Underlay

from .conftest import PREFIX, daemon_starter
from .helpers import VENV_BIN, add_pod, ping, wait_for
from .wgkit import WgDaemon, peers_of

WG_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}'
MTU = 1420


@pytest.fixture
def wg_daemons(
    underlay: Underlay, underlay_etcd: EtcdMember, tmp_path
) -> Iterator[Callable[..., list[WgDaemon]]]:
    made: list[WgDaemon] = []

    def make(*args: object) -> WgDaemon:
        made.append(WgDaemon(*args))
        return made[-1]

    try:
        yield from daemon_starter(underlay, underlay_etcd, tmp_path, WG_CONFIG, make)
    finally:
        for d in made:  # after the starter stopped the daemons: their wireguard-go too
            d.kill_wireguard_go()


def test_three_nodes_over_wireguard(wg_daemons, netns_factory, underlay_etcd):
    daemons = wg_daemons(3)
    env = daemons[0].env()
    assert env["FLANNEL_MTU"] == str(MTU)
    keys = {d.host.name: (d.dir / "flannel-wg.pubkey").read_text().strip() for d in daemons}
    assert len(set(keys.values())) == 3
    for d in daemons:
        assert oct(d.key_file.stat().st_mode & 0o777) == "0o600"
        want = {
            keys[x.host.name]: (f"{x.host.ip}:51820", (str(x.subnet),))
            for x in daemons
            if x is not d
        }
        wait_for(lambda d=d, want=want: peers_of(d) == want, 10, what="wireguard peers")
        addrs = d.host.run("ip", "-4", "-o", "addr", "show", "dev", "flannel-wg").stdout
        assert f"{d.subnet.network_address}/32" in addrs
        routes = d.host.run("ip", "route", "show", "proto", "70").stdout
        assert "10.244.0.0/16 dev flannel-wg" in routes
        assert "interface: flannel-wg" in d.wg("show")
    # The lease value, exactly as Flannel writes it.
    value = underlay_etcd.etcdctl(
        "get", f"{PREFIX}/subnets/{str(daemons[0].subnet).replace('/', '-')}", "--print-value-only"
    ).stdout
    assert (
        f'"BackendType":"wireguard","BackendData":{{"PublicKey":"{keys["h1"]}","Port":51820}}'
        in value
    )
    pods = [add_pod(netns_factory, d.host, d.subnet, f"p{i}", MTU) for i, d in enumerate(daemons)]
    for src, dst in ((0, 1), (1, 2), (2, 0), (0, 2)):
        assert ping(pods[src], daemons[dst].subnet.network_address + 2, count=3, timeout=2)
    # every node completed a handshake with every peer
    for d in daemons:
        state = d.uapi().get()
        assert all(p.last_handshake > 0 for p in state.peers), d.host.name

    # A peer removed by hand is back within 1 s.
    d0, victim = daemons[0], keys["h2"]
    started = time.monotonic()
    d0.wg("set", "flannel-wg", "peer", victim, "remove")
    assert victim not in peers_of(d0)
    wait_for(lambda: victim in peers_of(d0), 1.0, 0.01, what="peer restored")
    print(f"peer restored after {time.monotonic() - started:.3f}s")

    # The device deleted by hand (wireguard-go exits with its TUN) -> rebuilt, peers replayed.
    old = d0.wggo_pid()
    d0.host.run("ip", "link", "del", "flannel-wg")
    wait_for(lambda: d0.wggo_pid() not in (None, old), 5, what="device rebuilt")
    wait_for(lambda: len(peers_of(d0)) == 2, 5, what="peers replayed after rebuild")
    wait_for(lambda: ping(pods[0], daemons[2].subnet.network_address + 2), 10, 0.2, what="ping")

    # wireguard-go killed -> restarted and reprogrammed.
    old = d0.wggo_pid()
    assert old is not None
    os.kill(old, 9)
    wait_for(lambda: d0.wggo_pid() not in (None, old), 5, what="wireguard-go restarted")
    wait_for(lambda: len(peers_of(d0)) == 2, 5, what="peers replayed")
    assert ping(pods[0], daemons[1].subnet.network_address + 2, count=3, timeout=2)


def test_restart_keeps_key_and_loses_no_ping(wg_daemons, netns_factory):
    daemons = wg_daemons(2)
    pods = [add_pod(netns_factory, d.host, d.subnet, f"r{i}", MTU) for i, d in enumerate(daemons)]
    target = daemons[1].subnet.network_address + 2
    wait_for(lambda: ping(pods[0], target, count=1), 10, 0.2, what="first ping")
    key_before = (daemons[0].dir / "flannel-wg.pubkey").read_text()
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", pods[0], "ping", "-c", "40", "-i", "0.1", "-W", "1", str(target)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    daemons[0].stop()
    daemons[0].start()
    daemons[0].wait_ready()
    out, _ = pinger.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert (daemons[0].dir / "flannel-wg.pubkey").read_text() == key_before
    time.sleep(0.5)
    assert ping(pods[0], target)


def test_removed_key_file_is_a_clear_error(wg_daemons):
    (d,) = wg_daemons(1)
    d.stop()
    public = (d.dir / "flannel-wg.pubkey").read_text().strip()
    d.key_file.unlink()
    d.start()
    assert d.proc is not None
    code = d.proc.wait(timeout=30)
    assert code == 3
    assert "is missing but this node had public key" in d.log_tail()
    assert public in d.log_tail()
    assert not d.key_file.exists()  # no silent new identity
    # corrupt file: same, exit 3
    d.key_file.write_text("not a key\n")
    d.start()
    assert d.proc.wait(timeout=30) == 3
    assert "corrupt" in d.log_tail()
    d.proc = None
    # `flannelish uninstall` takes the node out: flannel-wg goes, and wireguard-go with it.
    pid = d.wggo_pid()
    assert pid is not None
    d.host.run(str(VENV_BIN / "flannelish"), "uninstall", "--yes")
    wait_for(lambda: not Path(f"/proc/{pid}/cmdline").exists() or
             b"wireguard-go" not in Path(f"/proc/{pid}/cmdline").read_bytes(), 5,
             what="wireguard-go gone")  # fmt: skip
    assert "flannel-wg" not in d.host.run("ip", "link").stdout


def test_hand_written_flannel_lease_interops(wg_daemons, underlay_etcd):
    (d,) = wg_daemons(1)
    peer_key = run(["wg", "genkey"]).stdout.strip()
    peer_pub = subprocess.run(
        ["wg", "pubkey"], input=peer_key, capture_output=True, text=True, check=True
    ).stdout.strip()
    value = (
        '{"PublicIP":"198.18.0.77","PublicIPv6":null,"BackendType":"wireguard",'
        f'"BackendData":{{"PublicKey":"{peer_pub}","Port":51820}}}}'
    )
    underlay_etcd.etcdctl("put", f"{PREFIX}/subnets/10.244.250.0-24", value)
    wait_for(
        lambda: peers_of(d).get(peer_pub) == ("198.18.0.77:51820", ("10.244.250.0/24",)),
        10,
        what="flannel peer programmed",
    )
    underlay_etcd.etcdctl("del", f"{PREFIX}/subnets/10.244.250.0-24")
    wait_for(lambda: peer_pub not in peers_of(d), 10, what="flannel peer removed")


SPOOF_SCRIPT = r"""
import os, sys
from scapy.all import IP, UDP, ICMP, Raw, send, rdpcap
node1, pod1, src2 = sys.argv[1], sys.argv[2], sys.argv[3]
captured = [bytes(p[UDP].payload) for p in rdpcap(sys.argv[4]) if UDP in p and p[IP].dst == node1]
data = [c for c in captured if c[:1] == b"\x04" and len(c) > 32]
inner = bytes(IP(src=src2, dst=pod1) / ICMP(id=0x5150, seq=1) / Raw(b"spoofed" * 8))
frames = [
    # plaintext: an IP packet for the pod, straight to the listen port
    IP(src=src2, dst=node1) / UDP(sport=51820, dport=51820) / Raw(inner),
    # a made-up data message: type 4, a real receiver index, a fresh counter, no valid tag
    IP(dst=node1) / UDP(sport=51820, dport=51820)
    / Raw(b"\x04\0\0\0" + data[0][4:8] + (2**40).to_bytes(8, "little") + inner + b"\0" * 16),
    # an initiation from a key the node does not know
    IP(dst=node1) / UDP(sport=51820, dport=51820) / Raw(b"\x01\0\0\0" + os.urandom(144)),
]
# replays of real data packets, from the rogue host and with the real peer's source address
frames += [IP(dst=node1) / UDP(sport=51820, dport=51820) / Raw(c) for c in data[:3]]
frames += [IP(src=src2, dst=node1) / UDP(sport=51820, dport=51820) / Raw(c) for c in data[:3]]
send(frames, verbose=False)
print(len(frames))
"""


def test_spoofed_packets_to_the_listen_port_reach_no_pod(
    wg_daemons, netns_factory, underlay, tmp_path
):
    """WireGuard's authentication is the anti-spoof: nothing a non-peer sends gets through."""
    import sys

    daemons = wg_daemons(2)
    pods = [add_pod(netns_factory, d.host, d.subnet, f"s{i}", MTU) for i, d in enumerate(daemons)]
    pod1 = daemons[0].subnet.network_address + 2
    node1 = daemons[0].host.ip
    # Capture real data packets node2 -> node1 (material for replays).
    pcap = tmp_path / "real.pcap"
    dump = subprocess.Popen(
        ["ip", "netns", "exec", underlay.netns, "tcpdump", "-i", "br0", "-U", "-c", "4", "-w",
         str(pcap), "udp", "port", "51820", "and", "dst", "host", str(node1)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    try:
        wait_for(lambda: ping(pods[1], pod1, count=5), 10, 0.2, what="real traffic")
        dump.wait(timeout=10)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    rx_before = {p.public_key: p.rx_bytes for p in daemons[0].uapi().get().peers}
    # What reaches the pod: every ICMP packet, seen by tcpdump inside it.
    seen = tmp_path / "pod.txt"
    with open(seen, "w") as out:
        sniff = subprocess.Popen(
            ["ip", "netns", "exec", pods[0], "tcpdump", "-i", "eth0", "-n", "-l", "icmp"],
            stdout=out, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(0.5)
            rogue = underlay.add_host("rogue", index=66)
            sent = run(
                [sys.executable, "-c", SPOOF_SCRIPT, str(node1), str(pod1),
                 str(daemons[1].host.ip), str(pcap)],
                netns=rogue.netns,
            )  # fmt: skip
            assert int(sent.stdout.strip()) == 9
            time.sleep(1.0)
            assert ping(pods[1], pod1, count=1)  # proves the sniffer sees what does arrive
            time.sleep(0.3)
        finally:
            sniff.terminate()
            sniff.wait(timeout=5)
    lines = seen.read_text().splitlines()
    assert lines, "the pod's sniffer saw nothing, not even the real ping"
    assert not [line for line in lines if "id 20816" in line], lines  # 0x5150: the spoofed one
    # Exactly the one real echo request: no replayed data packet was delivered either.
    assert len([line for line in lines if "echo request" in line]) == 1, lines
    # Nothing was authenticated, not even the replays: only the real ping's bytes arrived.
    rx_after = {p.public_key: p.rx_bytes for p in daemons[0].uapi().get().peers}
    (key,) = rx_before
    assert rx_after[key] - rx_before[key] < 2 * 128 + 64, (rx_before, rx_after)
