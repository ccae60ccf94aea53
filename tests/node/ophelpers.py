"""Helpers for the node-operations namespace tests: UDP probes, ping, polling."""

from __future__ import annotations

import subprocess
import sys
import time

from flannelish.testing.proc import run

# A UDP receiver that prints "<source ip> <payload>" for each datagram.  It runs until
# the test closes its stdin (every probe has been sent by then), then drains for `idle`
# seconds: a timer from its own start let a slow sender (scapy starting on a loaded
# machine) miss it entirely.
_RECEIVER = """
import select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
idle = float(sys.argv[2])
print("ready", flush=True)
deadline = None  # set once stdin closes
while deadline is None or time.monotonic() < deadline:
    watched = [s] if deadline is not None else [s, sys.stdin]
    left = None if deadline is None else max(deadline - time.monotonic(), 0)
    ready, _, _ = select.select(watched, [], [], left)
    if sys.stdin in ready and not sys.stdin.readline():
        deadline = time.monotonic() + idle
    if s in ready:
        data, addr = s.recvfrom(2048)
        print(addr[0], data.decode(errors="replace"), flush=True)
"""

_SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""


class UdpReceiver:
    """A receiver process inside a namespace; .lines() returns what it saw."""

    def __init__(self, netns: str, port: int = 9999, idle: float = 1.5) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", _RECEIVER, str(port), str(idle)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if first.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"receiver did not start: {first!r} {self.proc.stderr}")

    def lines(self, timeout: float = 10.0) -> list[str]:
        """What arrived; call after every probe was sent (it closes the receiver's stdin)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)  # closes stdin: drain, then exit
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return out.split("\n")[:-1] if out else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# A VXLAN frame with a valid VNI whose inner packet claims to come from a pod
# and goes to the target pod's UDP receiver (port 9999), sent 3 times.
_SPOOF = """
import sys
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.sendrecv import send
node_ip, port, inner_mac, pod_ip, vni, inner_src = sys.argv[1:7]
inner = Ether(src="0a:58:0a:f4:ff:00", dst=inner_mac) / IP(src=inner_src, dst=pod_ip)
pkt = (IP(dst=node_ip) / UDP(sport=40000, dport=int(port)) / VXLAN(vni=int(vni), flags=0x08)
       / inner / UDP(sport=5555, dport=9999) / b"spoofed")
send(pkt, count=3, inter=0.1, verbose=False)
"""


def send_spoofed_vxlan(netns, node_ip, inner_mac: str, pod_ip: str, *, inner_src: str,
                       port: int = 8472, vni: int = 1) -> None:  # fmt: skip
    """From `netns` (a non-peer underlay host), inject VXLAN at node_ip with scapy."""
    run(["ip", "netns", "exec", netns, sys.executable, "-c", _SPOOF, str(node_ip), str(port),
         inner_mac, pod_ip, str(vni), inner_src], timeout=60)  # fmt: skip


def send_udp(netns: str, dst: str, payload: str, port: int = 9999) -> None:
    run(["ip", "netns", "exec", netns, sys.executable, "-c", _SENDER, dst, str(port), payload])


def ping(netns: str, dst: str, count: int = 2) -> bool:
    result = run(["ping", "-c", str(count), "-i", "0.2", "-W", "1", dst], netns=netns, check=False)
    return result.returncode == 0


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Daemon:
    """`flannelish daemon` inside a host namespace (stopped by PID)."""

    def __init__(self, netns: str, endpoint: str, workdir, *flags: str) -> None:
        import os
        from pathlib import Path

        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.subnet_file = self.dir / "subnet.env"
        self.log_path = self.dir / "daemon.log"
        binary = str(Path(sys.executable).with_name("flannelish"))
        argv = [binary, "daemon", "--etcd-endpoints", endpoint,
                "--subnet-file", str(self.subnet_file), *flags]  # fmt: skip
        env = dict(os.environ)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv], stdout=log, stderr=log, env=env
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_subnet(self, timeout: float = 30.0) -> str:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log()[-2000:]}")
            return self.subnet_file.exists()

        assert wait_for(ready, timeout), f"no subnet.env: {self.log()[-2000:]}"
        env = dict(line.split("=", 1) for line in self.subnet_file.read_text().splitlines())
        return env["FLANNEL_SUBNET"]

    def stop(self) -> None:
        from flannelish.testing.proc import stop_pid

        if self.proc.poll() is None:
            stop_pid(self.proc.pid, proc=self.proc)


class ConntrackProbe:
    """A test-owned nft table in a node namespace counting, after conntrack has run
    (priority filter), the tunnel's UDP packets (dport `port`) leaving and arriving
    by whether conntrack tracked them, and the forwarded inner pod UDP (dport 9999)
    that it tracked.  Its ct expressions keep conntrack on in the namespace."""

    def __init__(self, netns: str, family: str, port: int) -> None:
        self.netns, self.family = netns, family
        tunnel = [f'udp dport {port} ct state untracked counter comment "untracked"',
                  f'udp dport {port} ct state != untracked counter comment "tracked"']  # fmt: skip
        chains = {
            "p_out": ("output", tunnel),
            "p_pre": ("prerouting", tunnel),
            "p_fwd": ("forward", ['udp dport 9999 ct state != untracked counter comment "inner"']),
        }
        lines = [f"add table {family} ctprobe"]
        for name, (hook, rules) in chains.items():
            lines.append(f"add chain {family} ctprobe {name} "
                         f"{{ type filter hook {hook} priority filter; }}")  # fmt: skip
            lines += [f"add rule {family} ctprobe {name} {rule}" for rule in rules]
        run(["nft", "; ".join(lines)], netns=netns)

    def counts(self) -> dict[str, int]:
        """Packets per comment (untracked / tracked / inner), summed over the chains."""
        import json

        out = run(["nft", "-j", "list", "table", self.family, "ctprobe"], netns=self.netns)
        counts: dict[str, int] = {}
        for item in json.loads(out.stdout)["nftables"]:
            rule = item.get("rule")
            if rule:
                packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
                counts[rule["comment"]] = counts.get(rule["comment"], 0) + packets
        return counts
