"""Benchmark: how fast a lease written to etcd becomes kernel state on a node.

One real `flannelish daemon` runs in a host namespace on an isolated underlay
with etcd on the underlay bridge.  From inside that namespace, 100 simulated
peer leases are written one at a time; for each, the time from the start of
the etcd put until the kernel announces its route (the last of neigh -> fdb
-> route; seen on an rtnetlink multicast socket, not by polling) is
measured, then the same for deleting it (route gone).

Baseline, measured in the same run and the same namespace: the bare etcd
watch latency (put -> watch event in a plain client), i.e. the floor any
watch-driven daemon sits on.  Goal: p99 < 200 ms.

Also importable: :class:`BenchCluster` sets up underlay, etcd and daemons for
the other benchmarks (scale.py, datapath.py).  Run as root:
``.venv/bin/python bench/convergence.py [--peers 100]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from flannelish.subnet.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PREFIX = "/coreos.com/network"
KEYS = Keys(PREFIX)
CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


def lease_value(n: int, public_ip: str | None = None) -> str:
    mac = f"0e:00:00:00:{n // 256:02x}:{n % 256:02x}"
    ip = public_ip or f"198.18.{1 + n // 250}.{1 + n % 250}"
    return json.dumps(
        {"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
         "BackendData": {"VNI": 1, "VtepMAC": mac}},
        separators=(",", ":"),
    )  # fmt: skip


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class BenchCluster:
    """Underlay + etcd + daemons in namespaces, all removed on exit."""

    def __init__(self) -> None:
        from flannelish.testing.netns import NetnsFactory

        self.factory = NetnsFactory("flbn")
        self.factory.remove_leftovers()
        self.tmp = Path(tempfile.mkdtemp(prefix="flannelish-bench-"))
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.etcd: Any = None
        self.underlay: Any = None

    def __enter__(self) -> BenchCluster:
        from flannelish.testing.etcd import start_etcd
        from flannelish.testing.underlay import Underlay

        try:
            self.underlay = Underlay(self.factory).create()
            self.etcd = start_etcd(
                name="bench-etcd", host=str(self.underlay.gateway), netns=self.underlay.netns
            )
            self.etcd.etcdctl("put", KEYS.config, CONFIG)
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def endpoint(self) -> str:
        return str(self.etcd.client_url)

    def add_host(self, name: str) -> Any:
        return self.underlay.add_host(name)

    def subnet_file(self, host: Any) -> Path:
        return self.tmp / host.name / "subnet.env"

    def start_daemon(self, host: Any, *flags: str, wait: bool = True) -> subprocess.Popen[bytes]:
        subnet_file = self.subnet_file(host)
        subnet_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.tmp / f"{host.name}.log", "ab")  # noqa: SIM115 - lives with the process
        env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, str(VENV_BIN / "flannelish"), "daemon",
             "--etcd-endpoints", self.endpoint, "--subnet-file", str(subnet_file), *flags],
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
        self.daemons[host.name] = proc
        if wait:
            self.wait_subnet_file(host, proc)
        return proc

    def wait_subnet_file(
        self, host: Any, proc: subprocess.Popen[bytes], timeout: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout
        while not self.subnet_file(host).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon on {host.name} did not start; see {self.tmp}")
            time.sleep(0.02)

    def subnet(self, host: Any) -> IPv4Network:
        from flannelish.subnet_env import read_subnet_env

        env = read_subnet_env(self.subnet_file(host))
        if env is None or env.subnet is None:
            raise RuntimeError("no FLANNEL_SUBNET")
        return env.subnet

    def __exit__(self, *exc: object) -> None:
        from flannelish.testing.proc import stop_pid

        for proc in self.daemons.values():
            stop_pid(proc.pid, proc=proc)
        if self.etcd is not None:
            self.etcd.destroy()
        self.factory.cleanup()
        if os.environ.get("FLANNELISH_BENCH_KEEP"):
            print(f"daemon logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# -- the measurement, run inside the host namespace ------------------------------------


class RouteEvents:
    """Kernel route notifications (RTM_NEWROUTE/DELROUTE of our protocol), time-stamped.

    Listening instead of polling: dumping routes every millisecond would take
    the kernel's rtnl lock and a CPU away from the daemon being measured.
    """

    def __init__(self) -> None:
        import socket

        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self._sock.bind((0, 0x40))  # RTMGRP_IPV4_ROUTE
        self.seen: dict[tuple[str, IPv4Network], float] = {}
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        from flannelish.kernel import rtnl
        from flannelish.kernel.netlink import ROUTE_PROTO

        while True:
            data = self._sock.recv(1 << 16)
            now = time.time()
            for mtype, _flags, _seq, body, end in rtnl.messages(data):
                if mtype in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
                    fields = rtnl.RTMSG.unpack_from(data, body)
                    attrs = rtnl.parse_attrs(data, body + rtnl.RTMSG.size, end)
                    if fields[5] == ROUTE_PROTO and rtnl.RTA_DST in attrs:
                        dst = IPv4Network((bytes(attrs[rtnl.RTA_DST]), fields[1]))
                        kind = "add" if mtype == rtnl.RTM_NEWROUTE else "del"
                        self.seen.setdefault((kind, dst), now)

    def wait(self, kind: str, dst: IPv4Network, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while (kind, dst) not in self.seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for the kernel ({kind} {dst})")
            time.sleep(0.0002)
        return self.seen[(kind, dst)]


def _wait(cond: Any, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the watch event")
        time.sleep(0.0002)
    return time.time()


def measure_inside(endpoint: str, peers: int) -> dict[str, list[float]]:
    import pyetcd

    host, port = endpoint.split("//")[1].rsplit(":", 1)
    client = pyetcd.client(host=host, port=int(port))
    routes = RouteEvents()

    # Baseline: plain watch latency, same etcd, same namespace.
    seen: dict[str, float] = {}
    events, cancel = client.watch_prefix("/bench/baseline/")

    def consume() -> None:
        for ev in events:
            seen[ev.key.decode()] = time.time()

    threading.Thread(target=consume, daemon=True).start()
    time.sleep(0.2)
    watch_ms = []
    for i in range(peers):
        key = f"/bench/baseline/{i}"
        t0 = time.time()
        client.put(key, "x")
        _wait(lambda key=key: key in seen)
        watch_ms.append((seen[key] - t0) * 1000)
    cancel()

    add_ms, del_ms = [], []
    for i in range(peers):
        subnet = IPv4Network(f"10.244.{150 + i}.0/24")  # the daemon's own is in .1-.100
        key = KEYS.subnet(subnet)
        t0 = time.time()
        client.put(key, lease_value(i, f"198.18.1.{1 + i}"))
        add_ms.append((routes.wait("add", subnet) - t0) * 1000)
    for i in range(peers):
        subnet = IPv4Network(f"10.244.{150 + i}.0/24")
        key = KEYS.subnet(subnet)
        t0 = time.time()
        client.delete(key)
        del_ms.append((routes.wait("del", subnet) - t0) * 1000)
    return {"watch": watch_ms, "add": add_ms, "delete": del_ms}


def report(results: dict[str, list[float]]) -> None:
    base50 = statistics.median(results["watch"])
    base99 = percentile(results["watch"], 99)
    print(f"{'':38}{'p50 ms':>9}{'p99 ms':>9}{'x base p50':>12}{'x base p99':>12}")
    rows = [
        ("baseline: etcd put -> watch event", results["watch"]),
        ("daemon: lease put -> route in kernel", results["add"]),
        ("daemon: lease delete -> route gone", results["delete"]),
    ]
    for name, values in rows:
        p50, p99 = statistics.median(values), percentile(values, 99)
        print(f"{name:38}{p50:9.2f}{p99:9.2f}{p50 / base50:12.1f}{p99 / base99:12.1f}")
    p99_add = percentile(results["add"], 99)
    verdict = "MET" if p99_add < 200 else "MISSED"
    print(f"goal: add p99 < 200 ms -> {p99_add:.1f} ms {verdict} (n={len(results['add'])})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--inside", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.peers <= 100:
        parser.error("--peers must be 1..100 (simulated subnets 10.244.150-249.0/24)")
    if args.inside:
        print(json.dumps(measure_inside(args.inside, args.peers)))
        return 0
    sys.path.insert(0, str(ROOT))
    with BenchCluster() as cluster:
        host = cluster.add_host("n1")
        cluster.start_daemon(host)
        out = subprocess.run(
            ["ip", "netns", "exec", host.netns, sys.executable, __file__,
             "--inside", cluster.endpoint, "--peers", str(args.peers)],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"},
        )  # fmt: skip
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        print(f"convergence: 1 daemon, {args.peers} simulated peers, leases written one at a time")
        report(json.loads(out.stdout.strip().splitlines()[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
