"""Benchmark: pod-to-pod TCP throughput and CPU cost over the WireGuard backend.

Two hosts on the isolated underlay run `flannelish daemon` with the wireguard
backend (wireguard-go on this machine: the kernel has no WireGuard); one pod
per host talks across ``flannel-wg``.  In the same run and the same host
namespaces, two baselines:

* a hand-built tunnel of the same implementation: a second wireguard-go
  (``hwg0``, its own private /run/wireguard, port 51900, MTU 1420) set up
  with ``wg set`` and one route, carrying a second pod pair;
* a hand-built VXLAN (bench/datapath.py's: the data path flannel.1 uses),
  for the CPU cost per transferred GB beside WireGuard's.

Runs are interleaved (daemon, hand-built WireGuard, VXLAN, repeated); the
median of each is reported.  CPU: the machine's busy time (/proc/stat, all
cores: user+system+irq+softirq; includes other tenants, so noisy) and the
wireguard-go processes' own time, per GB received.
Goal: daemon >= 0.95x hand-built WireGuard.
Run as root: ``.venv/bin/python bench/wireguard.py [--seconds 3] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from convergence import KEYS, BenchCluster
from datapath import HAND_NET, hand_vxlan, routed_pod, sh

MTU = 1420
HWG_NET = "10.98"  # the hand-built WireGuard's pods
WG_CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}'


def wg_out(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["wg", *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout.strip()


class HandWireguard:
    """hwg0 on every host: wireguard-go in a private mount namespace, set up with `wg`."""

    def __init__(self, hosts: list[Any], tmp: Path) -> None:
        self.hosts, self.tmp = hosts, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> HandWireguard:
        script = (
            "mkdir -p /run/wireguard && mount -t tmpfs -o mode=0700 hwg /run/wireguard && "
            "exec wireguard-go -f hwg0"
        )
        env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
        keys = []
        for host in self.hosts:
            p = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation",
                 "private", "--", "sh", "-c", script],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            self.procs.append(p)
            private = wg_out("genkey")
            keyfile = self.tmp / f"{host.name}.hwg.key"
            keyfile.write_text(private + "\n")
            os.chmod(keyfile, 0o600)
            keys.append((keyfile, wg_out("pubkey", stdin=private)))
        for p in self.procs:
            sock = f"/proc/{p.pid}/root/run/wireguard/hwg0.sock"
            deadline = time.monotonic() + 5
            while not os.path.exists(sock):
                if time.monotonic() > deadline:
                    raise RuntimeError("hand-built wireguard-go did not start")
                time.sleep(0.02)
        for i, (host, p) in enumerate(zip(self.hosts, self.procs, strict=True)):
            ns = f"/proc/{p.pid}/ns"
            argv = ["nsenter", f"--mount={ns}/mnt", f"--net={ns}/net", "wg", "set", "hwg0",
                    "private-key", str(keys[i][0]), "listen-port", "51900"]  # fmt: skip
            for j, other in enumerate(self.hosts):
                if j != i:
                    argv += ["peer", keys[j][1], "endpoint", f"{other.ip}:51900",
                             "allowed-ips", f"{HWG_NET}.{j + 1}.0/24"]  # fmt: skip
            subprocess.run(argv, check=True, capture_output=True)
            sh(host.netns, "ip", "link", "set", "hwg0", "mtu", str(MTU), "up")
            sh(host.netns, "ip", "addr", "add", f"{HWG_NET}.{i + 1}.0/32", "dev", "hwg0")
            sh(host.netns, "ip", "route", "add", f"{HWG_NET}.0.0/16", "dev", "hwg0")
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def busy_jiffies() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return user + nice + system + irq + softirq


def proc_jiffies(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        total += int(rest[11]) + int(rest[12])  # utime, stime
    return total


def iperf(client_ns: str, server_ns: str, ip: str, seconds: int, pids: list[int]) -> dict:
    """Gbit/s, GB received and CPU seconds (machine busy, wireguard-go) of one TCP stream."""
    hz = os.sysconf("SC_CLK_TCK")
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", ip],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(50):
            b0, p0 = busy_jiffies(), proc_jiffies(pids)
            result = subprocess.run(
                ["ip", "netns", "exec", client_ns, "iperf3", "-J", "-c", ip, "-t", str(seconds)],
                capture_output=True, text=True, timeout=seconds + 30,
            )  # fmt: skip
            b1, p1 = busy_jiffies(), proc_jiffies(pids)
            out = result.stdout
            if '"error"' not in out and result.returncode == 0:
                break
            time.sleep(0.1)
        doc = json.loads(out or "{}")
        if "error" in doc or "sum_received" not in doc.get("end", {}):
            raise RuntimeError(f"iperf3 {client_ns} -> {ip}: {doc.get('error', out[-300:])}")
        recv = doc["end"]["sum_received"]
        gb = float(recv["bytes"]) / 1e9
        return {
            "gbps": float(recv["bits_per_second"]) / 1e9,
            "gb": gb,
            "busy_s_per_gb": (b1 - b0) / hz / gb,
            "wggo_s_per_gb": (p1 - p0) / hz / gb,
        }
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)


def wait_ping(pod: str, ip: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["ip", "netns", "exec", pod, "ping", "-c1", "-W1", str(ip)],
                         capture_output=True).returncode != 0:  # fmt: skip
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ip} not reachable from {pod}")


def daemon_wggo_pids(cluster: BenchCluster, hosts: list[Any]) -> list[int]:
    pids = []
    for h in hosts:
        pidfile = cluster.subnet_file(h).parent / "flannel-wg.wireguard-go.pid"
        pids.append(int(pidfile.read_text()))
    return pids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from flannelish.kernel.wireguard_go import stop_node_wireguard_go
    from flannelish.testing.proc import stop_pid

    with BenchCluster() as cluster:
        cluster.etcd.etcdctl("put", KEYS.config, WG_CONFIG)
        hosts = [cluster.add_host(f"n{i}") for i in (1, 2)]
        saved = dict(os.environ)
        try:
            for host in hosts:
                os.environ["WIREGUARD_KEY_FILE"] = str(cluster.tmp / f"{host.name}.wgkey")
                os.environ["FLANNELISH_WG_PRIVATE_RUN"] = "1"
                cluster.start_daemon(host)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        try:
            subnets = [cluster.subnet(h) for h in hosts]
            daemon_pods = [routed_pod(cluster, hosts[i], subnets[i], f"pw{i}", MTU) for i in (0, 1)]
            hwg_subnets = [IPv4Network(f"{HWG_NET}.{i + 1}.0/24") for i in (0, 1)]
            vx_subnets = [IPv4Network(f"{HAND_NET}.{i + 1}.0/24") for i in (0, 1)]
            with HandWireguard(hosts, cluster.tmp) as hand:
                hwg_pods = [
                    routed_pod(cluster, hosts[i], hwg_subnets[i], f"ph{i}", MTU) for i in (0, 1)
                ]
                hand_vxlan(hosts)
                vx_pods = [
                    routed_pod(cluster, hosts[i], vx_subnets[i], f"pv{i}", 1450) for i in (0, 1)
                ]
                targets = [
                    (daemon_pods, subnets[1].network_address + 2),
                    (hwg_pods, hwg_subnets[1].network_address + 2),
                    (vx_pods, vx_subnets[1].network_address + 2),
                ]
                for pods, ip in targets:
                    wait_ping(pods[0], ip)
                daemon_pids = daemon_wggo_pids(cluster, hosts)
                cases = {
                    "daemon wireguard (flannel-wg)": (*targets[0], daemon_pids),
                    "hand-built wireguard-go (hwg0)": (*targets[1], hand.pids()),
                    "vxlan (hand-built, as flannel.1)": (*targets[2], []),
                }
                results: dict[str, list[dict]] = {name: [] for name in cases}
                names = list(cases)
                for n in range(args.rounds):
                    # Alternate the order so a drifting machine load favours neither side.
                    for name in names if n % 2 == 0 else names[1::-1] + names[2:]:
                        pods, ip, pids = cases[name]
                        results[name].append(iperf(pods[0], pods[1], str(ip), args.seconds, pids))
        finally:
            # Daemons first: a running daemon restarts a wireguard-go that dies.
            for proc in cluster.daemons.values():
                stop_pid(proc.pid, proc=proc)
            for host in hosts:
                stop_node_wireguard_go(cluster.subnet_file(host).parent)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    base = med("hand-built wireguard-go (hwg0)", "gbps")
    print(f"wireguard: iperf3 TCP, 1 stream, {args.seconds}s x {args.rounds} rounds, interleaved")
    print(
        f"{'':34}{'Gbit/s':>8}{'x hand':>8}{'busy CPU s/GB':>15}{'wg-go s/GB':>12}  runs (Gbit/s)"
    )
    for name, runs in results.items():
        shown = " ".join(f"{r['gbps']:.2f}" for r in runs)
        print(
            f"{name:34}{med(name, 'gbps'):8.2f}{med(name, 'gbps') / base:8.3f}"
            f"{med(name, 'busy_s_per_gb'):15.2f}{med(name, 'wggo_s_per_gb'):12.2f}  {shown}"
        )
    ratio = med("daemon wireguard (flannel-wg)", "gbps") / base
    paired = statistics.median(
        d["gbps"] / h["gbps"]
        for d, h in zip(
            results["daemon wireguard (flannel-wg)"],
            results["hand-built wireguard-go (hwg0)"],
            strict=True,
        )
    )
    print(f"median of per-round ratios (daemon / hand-built, adjacent runs): {paired:.3f}x")
    print(
        f"goal: daemon >= 0.95x hand-built wireguard-go -> {ratio:.3f}x "
        f"{'MET' if ratio >= 0.95 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
