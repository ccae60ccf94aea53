"""Benchmark: pod-to-pod TCP throughput through the daemon's overlay.

Two hosts on the isolated underlay run `flannelish daemon`; one pod per host
(a veth into a namespace, routed by the host) talks across the overlay.
In the same run and the same host namespaces, two baselines:

* a hand-built VXLAN (``ip link add ... type vxlan``, VNI 42, port 4789, the
  same MTU 1450, static neigh/FDB/route entries) carrying a second pod pair;
* the raw underlay: host to host over eth0, no encapsulation.

iperf3 runs are interleaved (overlay, hand-built, raw, repeated) and the
median of each is reported.  Goal: overlay >= 0.97x hand-built.
Run as root: ``.venv/bin/python bench/datapath.py [--seconds 3] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Network
from typing import Any

from convergence import BenchCluster

MTU = 1450
HAND_NET = "10.99"  # the hand-built overlay's pods: 10.99.<n>.0/24


def sh(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True)


def add_pod(cluster: BenchCluster, host: Any, subnet: IPv4Network, short: str) -> str:
    pod = cluster.factory.create(short)
    gw, ip = subnet.network_address + 1, subnet.network_address + 2
    veth = f"v{short}"
    sh(host.netns, "ip", "link", "add", veth, "mtu", str(MTU), "type", "veth", "peer", "name",
       "eth0", "mtu", str(MTU), "netns", pod)  # fmt: skip
    sh(host.netns, "ip", "addr", "add", f"{gw}/{subnet.prefixlen}", "dev", veth)
    sh(host.netns, "ip", "link", "set", veth, "up")
    sh(host.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh(pod, "ip", "addr", "add", f"{ip}/{subnet.prefixlen}", "dev", "eth0")
    sh(pod, "ip", "link", "set", "eth0", "up")
    sh(pod, "ip", "route", "add", "default", "via", str(gw))
    return pod


def hand_vxlan(hosts: list[Any]) -> None:
    """VNI 42 on port 4789 between the hosts, programmed the way Flannel does it."""
    macs = [f"0e:42:00:00:00:{i + 1:02x}" for i in range(len(hosts))]
    for i, host in enumerate(hosts):
        sh(host.netns, "ip", "link", "add", "hv.42", "address", macs[i], "mtu", str(MTU), "type",
           "vxlan", "id", "42", "local", str(host.ip), "dev", "eth0", "dstport", "4789",
           "nolearning")  # fmt: skip
        sh(host.netns, "ip", "addr", "add", f"{HAND_NET}.{i + 1}.0/32", "dev", "hv.42")
        sh(host.netns, "ip", "link", "set", "hv.42", "up")
        for j, peer in enumerate(hosts):
            if j == i:
                continue
            gw = f"{HAND_NET}.{j + 1}.0"
            sh(host.netns, "ip", "neigh", "replace", gw, "lladdr", macs[j], "dev", "hv.42",
               "nud", "permanent")  # fmt: skip
            sh(host.netns, "bridge", "fdb", "replace", macs[j], "dev", "hv.42", "dst",
               str(peer.ip), "self", "permanent")  # fmt: skip
            sh(host.netns, "ip", "route", "replace", f"{gw}/24", "via", gw, "dev", "hv.42",
               "onlink")  # fmt: skip


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    """Gbit/s received by the server for one TCP stream."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out = ""
        for _ in range(50):  # the server needs a moment to listen
            result = subprocess.run(
                ["ip", "netns", "exec", client_ns, "iperf3", "-J", "-c", server_ip, "-t",
                 str(seconds)],
                capture_output=True, text=True, timeout=seconds + 30,
            )  # fmt: skip
            out = result.stdout
            # iperf3 -J exits 0 even when it could not connect; the JSON says so.
            if '"error"' not in out and result.returncode == 0:
                break
            time.sleep(0.1)
        doc = json.loads(out or "{}")
        if "error" in doc or "sum_received" not in doc.get("end", {}):
            raise RuntimeError(f"iperf3 {client_ns} -> {server_ip}: {doc.get('error', out[-300:])}")
        return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with BenchCluster() as cluster:
        hosts = [cluster.add_host(f"n{i}") for i in (1, 2)]
        for host in hosts:
            cluster.start_daemon(host)
        subnets = [cluster.subnet(h) for h in hosts]
        overlay = [add_pod(cluster, hosts[i], subnets[i], f"po{i}") for i in range(2)]
        hand_subnets = [IPv4Network(f"{HAND_NET}.{i + 1}.0/24") for i in range(2)]
        hand_vxlan(hosts)
        hand = [add_pod(cluster, hosts[i], hand_subnets[i], f"ph{i}") for i in range(2)]
        # Wait until the daemons have programmed each other.
        deadline = time.monotonic() + 20
        while subprocess.run(["ip", "netns", "exec", overlay[0], "ping", "-c1", "-W1",
                              str(subnets[1].network_address + 2)],
                             capture_output=True).returncode != 0:  # fmt: skip
            if time.monotonic() > deadline:
                print("overlay not ready", file=sys.stderr)
                return 1
        pod_b, hand_b = subnets[1].network_address + 2, hand_subnets[1].network_address + 2
        cases = {
            "daemon overlay (flannel.1)": (overlay[0], overlay[1], str(pod_b)),
            "hand-built vxlan (hv.42)": (hand[0], hand[1], str(hand_b)),
            "raw underlay (eth0, MTU 1500)": (hosts[0].netns, hosts[1].netns, str(hosts[1].ip)),
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (client, server, ip) in cases.items():
                results[name].append(iperf(client, server, ip, args.seconds))
    medians = {name: statistics.median(v) for name, v in results.items()}
    base = medians["hand-built vxlan (hv.42)"]
    print(f"datapath: iperf3 TCP, 1 stream, {args.seconds}s x {args.rounds} rounds, interleaved")
    print(f"{'':32}{'median Gbit/s':>14}{'runs':>24}{'x hand-built':>14}")
    for name, values in results.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:32}{medians[name]:14.2f}{runs:>24}{medians[name] / base:14.3f}")
    ratio = medians["daemon overlay (flannel.1)"] / base
    print(
        f"goal: overlay >= 0.97x hand-built -> {ratio:.3f}x {'MET' if ratio >= 0.97 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
