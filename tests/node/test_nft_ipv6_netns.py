"""table ip6 flannelish in a real kernel: IPv6 masquerade and VXLAN anti-spoofing (IPv6 underlay).

A hand-built two-node IPv6 overlay (what the daemon programs for ``flannel-v6.1``):

    pod1 fd44:0:0:1::2 ─ cni0 ─ node1 fd18::1 ┐                  ┌ out   fd18::c8
                                               ├─ underlay br0 ──┤
    pod2 fd44:0:0:2::2 ─ cni0 ─ node2 fd18::2 ┘                  └ rogue fd18::63

Every IPv6 address is added with ``nodad`` (no waiting for DAD).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from ipaddress import IPv6Network

import pytest

from flannelish.kernel.nft import NftCli
from flannelish.node.firewall import NftRules
from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run
from flannelish.testing.underlay import Host, Underlay

from .conftest import PORT, VNI
from .ophelpers import ConntrackProbe

NETWORK6 = IPv6Network("fd44::/48")

# Prints "<source> <payload>" per datagram until the payload `until` (the test's
# last packet) arrives, or nothing for `timeout` s: no idle timer to race a
# sender that is slow to start (scapy takes seconds to import on a loaded machine).
_RECV = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 9999))
print("ready", flush=True)
s.settimeout(float(sys.argv[1]))
try:
    while True:
        data, addr = s.recvfrom(2048)
        text = data.decode(errors="replace")
        print(addr[0], text, flush=True)
        if text == sys.argv[2]:
            break
except socket.timeout:
    pass
"""

_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(sys.argv[2].encode(), (sys.argv[1], 9999))
"""

# IPv6/UDP/VXLAN from a non-peer, the inner packet claiming a pod source (3 times).
_SPOOF = """
import sys
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.sendrecv import send
node_ip, port, inner_mac, pod_ip, vni, inner_src = sys.argv[1:7]
inner = Ether(src="0a:58:0a:f4:ff:00", dst=inner_mac) / IPv6(src=inner_src, dst=pod_ip)
pkt = (IPv6(dst=node_ip) / UDP(sport=40000, dport=int(port)) / VXLAN(vni=int(vni), flags=0x08)
       / inner / UDP(sport=5555, dport=9999) / b"spoofed")
send(pkt, count=3, inter=0.1, verbose=False)
"""


@dataclass
class Node6:
    host: Host
    ip6: str
    subnet: IPv6Network
    mac: str
    pod: str

    @property
    def pod_ip(self) -> str:
        return str(self.subnet.network_address + 2)


def _addr6(host: Host, index: int) -> str:
    ip6 = f"fd18::{index:x}"
    host.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
    host.run("ip", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
    return ip6


def _node(factory: NetnsFactory, host: Host, index: int) -> Node6:
    subnet = IPv6Network(f"fd44:0:0:{index}::/64")
    node = Node6(
        host, _addr6(host, index), subnet, f"0a:58:0a:f4:1{index}:00", factory.create(f"q{index}")
    )
    h, gw = host.run, str(subnet.network_address + 1)
    h("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    h("ip", "link", "add", "flannel-v6.1", "type", "vxlan", "id", str(VNI), "local", node.ip6,
      "dev", "eth0", "dstport", str(PORT), "nolearning")  # fmt: skip
    h("ip", "link", "set", "flannel-v6.1", "address", node.mac, "mtu", "1430", "up")
    h("ip", "addr", "add", f"{subnet.network_address}/128", "dev", "flannel-v6.1", "nodad")
    h("ip", "link", "add", "cni0", "type", "bridge")
    h("ip", "addr", "add", f"{gw}/64", "dev", "cni0", "nodad")
    h("ip", "link", "set", "cni0", "mtu", "1430", "up")
    h("ip", "link", "add", "veth0", "mtu", "1430", "type", "veth", "peer", "name", "eth0",
      "mtu", "1430", "netns", node.pod)  # fmt: skip
    h("ip", "link", "set", "veth0", "master", "cni0", "up")
    p = ["ip", "-n", node.pod]
    run(["ip", "netns", "exec", node.pod, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])
    run([*p, "addr", "add", f"{node.pod_ip}/64", "dev", "eth0", "nodad"])
    run([*p, "link", "set", "eth0", "up"])
    run([*p, "-6", "route", "add", "default", "via", gw])
    return node


def _peer(node: Node6, peer: Node6) -> None:
    gw = str(peer.subnet.network_address)
    h = node.host.run
    h(
        "ip",
        "-6",
        "neigh",
        "replace",
        gw,
        "lladdr",
        peer.mac,
        "dev",
        "flannel-v6.1",
        "nud",
        "permanent",
    )
    h(
        "bridge",
        "fdb",
        "replace",
        peer.mac,
        "dev",
        "flannel-v6.1",
        "dst",
        peer.ip6,
        "self",
        "permanent",
    )
    h("ip", "-6", "route", "replace", str(peer.subnet), "via", gw, "dev", "flannel-v6.1", "onlink")


@dataclass
class Overlay6:
    node1: Node6
    node2: Node6
    rogue: Host
    out: Host
    out_ip: str


@pytest.fixture
def overlay6(netns_factory: NetnsFactory, underlay: Underlay) -> Overlay6:
    node1 = _node(netns_factory, underlay.add_host("n1", 1), 1)
    node2 = _node(netns_factory, underlay.add_host("n2", 2), 2)
    _peer(node1, node2)
    _peer(node2, node1)
    rogue = underlay.add_host("rogue", 99)
    _addr6(rogue, 99)
    out = underlay.add_host("out", 200)
    return Overlay6(node1, node2, rogue, out, _addr6(out, 200))


def rules6(node: Node6, **kwargs) -> NftRules:
    return NftRules(None, None, PORT, network6=NETWORK6, subnet6=node.subnet,
                    runner=NftCli(netns=node.host.netns), **kwargs)  # fmt: skip


def receive(netns: str, send, until: str, timeout: float = 30.0) -> list[str]:
    """What a receiver in `netns` saw while `send` ran, up to the payload `until`."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _RECV,
                             str(timeout), until], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        send()
        out, _ = proc.communicate(timeout=timeout + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.splitlines()


def send6(netns: str, dst: str, payload: str) -> None:
    run(["ip", "netns", "exec", netns, sys.executable, "-c", _SEND, dst, payload])


def test_ipv6_masquerade_hides_pods_from_the_outside_but_not_from_pods(overlay6):
    n1, n2 = overlay6.node1, overlay6.node2
    nft = rules6(n1, masq=True)
    nft.apply()
    assert "table ip6 flannelish" in run(["nft", "list", "tables"], netns=n1.host.netns).stdout

    def traffic() -> None:
        send6(n1.pod, overlay6.out_ip, "world")

    assert receive(overlay6.out.netns, traffic, "world") == [f"{n1.ip6} world"]
    pod_traffic = lambda: send6(n1.pod, n2.pod_ip, "pod")  # noqa: E731
    assert receive(n2.pod, pod_traffic, "pod") == [f"{n1.pod_ip} pod"]
    nft.remove()
    assert "flannelish" not in run(["nft", "list", "tables"], netns=n1.host.netns).stdout


def test_ipv6_tunnel_packets_between_peers_skip_conntrack_and_nat_and_filter_stay_right(
    overlay6,
):
    n1, n2 = overlay6.node1, overlay6.node2
    for node, peer in ((n1, n2), (n2, n1)):
        nft = rules6(node, masq=True)
        nft.set_peers([peer.ip6])
        nft.apply()
    sender, receiver = (ConntrackProbe(n.host.netns, "ip6", PORT) for n in (n1, n2))
    world = lambda: send6(n1.pod, overlay6.out_ip, "world")  # noqa: E731
    assert receive(overlay6.out.netns, world, "world") == [f"{n1.ip6} world"]  # masqueraded

    def traffic() -> None:
        run(["ip", "netns", "exec", overlay6.rogue.netns, sys.executable, "-c", _SPOOF, n2.ip6,
             str(PORT), n2.mac, n2.pod_ip, str(VNI), str(n1.subnet.network_address + 0x66)],
            timeout=60)  # fmt: skip
        send6(n1.pod, n2.pod_ip, "pod")

    # The pod's own source (no NAT between pods), nothing spoofed.
    assert receive(n2.pod, traffic, "pod") == [f"{n1.pod_ip} pod"]
    out, into = sender.counts(), receiver.counts()
    assert out["untracked"] >= 1 and out["tracked"] == 0  # encapsulated on n1: untracked
    assert out["inner"] >= 2  # the pod flows themselves are still tracked
    assert into["untracked"] >= 1 and into["tracked"] == 3  # the rogue's: tracked, dropped


@pytest.mark.parametrize("allow_any", [False, True])
def test_spoofed_ipv6_vxlan_from_a_non_peer_is_dropped_unless_allow_any(overlay6, allow_any):
    n1, n2 = overlay6.node1, overlay6.node2
    nft = rules6(n2, allow_any_vxlan=allow_any)
    nft.set_peers([n1.ip6])
    nft.apply()
    spoof_src = str(n1.subnet.network_address + 0x66)

    def traffic() -> None:
        run(["ip", "netns", "exec", overlay6.rogue.netns, sys.executable, "-c", _SPOOF, n2.ip6,
             str(PORT), n2.mac, n2.pod_ip, str(VNI), spoof_src], timeout=60)  # fmt: skip
        send6(n1.pod, n2.pod_ip, "from-peer")  # genuine peer traffic over IPv6 VXLAN

    seen = receive(n2.pod, traffic, "from-peer")
    assert f"{n1.pod_ip} from-peer" in seen
    spoofed = [line for line in seen if line.endswith("spoofed")]
    if allow_any:
        assert spoofed and spoofed[0].startswith(spoof_src)
        assert nft.rejected_packets() == 0
    else:
        assert spoofed == []
        assert nft.rejected_packets() == 3
