"""Benchmark: how fast a lease written to etcd becomes kernel state on a node.

One real `flannelish daemon` runs in a host namespace on an isolated underlay
with etcd on the underlay bridge.  From inside that namespace, 100 simulated
peer leases are written one at a time; for each, the time from the start of
the etcd put until the kernel announces its route (the last of neigh -> fdb
-> route; seen on an rtnetlink multicast socket, not by polling) is
measured, then the same for deleting it (route gone).  ``--dual-stack``: a
dual-stack network (IPv6 half over the fd18::/64 underlay) and dual-stack
leases (Flannel's ``10.244.X.0-24&fd44:0:0:X::-64`` keys, PublicIPv6 and
BackendV6Data): put -> BOTH routes, IPv4 and IPv6, in the kernel (each
family's alone reported beside it), delete -> both gone.

Baseline, measured in the same run and the same namespace: the bare etcd
watch latency (put -> watch event in a plain client), i.e. the floor any
watch-driven daemon sits on.  Goal: p99 < 200 ms.

``--population N``: N leases in Flannel's schema (/26 subnets of
10.0.0.0/8, one etcd lease, VTEP MAC and PublicIP per simulated node) are
written first; then flanneld (when ``FLANNELD_BIN`` names its binary) and
flannelish cold-start, each in its own namespace on the underlay (start ->
subnet.env, start -> all N routes, seen on a multicast socket); then K more
leases are written one at a time, ``--gap`` apart, and deleted again while
both daemons watch the same etcd: put -> route in each kernel, delete ->
route gone.  Same-run baselines: the bare etcd watch latency, and iproute2
(``ip -batch`` / ``bridge -batch``) programming the same 3N entries in a
fresh namespace.  Peak RSS (VmHWM) of each daemon.

Also importable: :class:`BenchCluster` sets up underlay, etcd and daemons for
the other benchmarks (scale.py, datapath.py).  Run as root:
``.venv/bin/python bench/convergence.py [--peers 100] [--dual-stack]``,
``FLANNELD_BIN=/usr/local/bin/flanneld .venv/bin/python bench/convergence.py
--population 1000 [--events 100] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from benchjson import pct

from flannelish.kernel.netlink import nexthop_id
from flannelish.subnet.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PREFIX = "/coreos.com/network"
KEYS = Keys(PREFIX)
Net = IPv4Network | IPv6Network
CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


def lease_value(n: int, public_ip: str | None = None, public_ipv6: str | None = None) -> str:
    """A peer's lease value; with ``public_ipv6`` a dual-stack one (Flannel's
    PublicIPv6 and BackendV6Data: the IPv6 tunnel's own VTEP MAC)."""
    mac = f"0e:00:00:00:{n // 256:02x}:{n % 256:02x}"
    ip = public_ip or f"198.18.{1 + n // 250}.{1 + n % 250}"
    value: dict[str, Any] = {
        "PublicIP": ip, "PublicIPv6": public_ipv6, "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": mac},
    }  # fmt: skip
    if public_ipv6:
        value["BackendV6Data"] = {"VNI": 1, "VtepMAC": f"0e:00:00:06:{n // 256:02x}:{n % 256:02x}"}
    return json.dumps(value, separators=(",", ":"))


class BenchCluster:
    """Underlay + etcd + daemons in namespaces, all removed on exit."""

    def __init__(
        self,
        underlay_network: IPv4Network | None = None,
        underlay_network6: IPv6Network | None = None,
        config: str = CONFIG,
    ) -> None:
        """``underlay_network6``: an IPv6 underlay beside the IPv4 one (hosts get
        ``ip6``); ``config``: the network config put in etcd."""
        from flannelish.testing.netns import NetnsFactory

        self.underlay_network = underlay_network
        self.underlay_network6 = underlay_network6
        self.config = config
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
            underlay = Underlay(self.factory)
            if self.underlay_network is not None:
                underlay.network = self.underlay_network
            underlay.network6 = self.underlay_network6
            self.underlay = underlay.create()
            self.etcd = start_etcd(
                name="bench-etcd", host=str(self.underlay.gateway), netns=self.underlay.netns
            )
            self.etcd.etcdctl("put", KEYS.config, self.config)
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

    def start_flanneld(self, host: Any, binary: str) -> subprocess.Popen[bytes]:
        """The real flanneld in this host's namespace, with its own flags (not waited for)."""
        subnet_file = self.subnet_file(host)
        subnet_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.tmp / f"{host.name}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, binary, f"--etcd-endpoints={self.endpoint}",
             "--iface=eth0", f"--subnet-file={subnet_file}", f"--etcd-prefix={PREFIX}"],
            stdout=log, stderr=log,
        )  # fmt: skip
        self.daemons[host.name] = proc
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
    """Kernel route notifications (RTM_NEWROUTE/DELROUTE), time-stamped.

    Listening instead of polling: dumping routes every millisecond would take
    the kernel's rtnl lock and a CPU away from the daemon being measured.
    IPv4 and IPv6 routes both (host routes, /32 and /128, are left out).
    ``netns``: listen in that namespace (the socket is opened there).
    ``proto``: only routes of this protocol (None: any; flanneld's routes
    carry the kernel's default).  ``expect``: destinations whose first
    appearance is counted; :attr:`all_seen` is set with the last one.
    """

    def __init__(
        self,
        netns: str | None = None,
        proto: int | None = None,
        expect: AbstractSet[Net] | None = None,
    ) -> None:
        import socket

        from flannelish.kernel.netlink import ROUTE_PROTO
        from flannelish.kernel.netns import in_netns

        self.proto = ROUTE_PROTO if proto == -1 else proto
        with in_netns(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:  # 5000 routes in a burst overflow a 4 MB buffer; root may force a larger one
            self._sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 26)  # SO_RCVBUFFORCE
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self._sock.bind((0, 0x40 | 0x400))  # RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
        self.seen: dict[tuple[str, Net], float] = {}
        self.expect: set[Net] = set(expect or ())
        self.expected_seen = 0
        self.all_seen = threading.Event()
        self.last_expected = 0.0
        self.overrun = False  # ENOBUFS: some notifications were lost
        self._cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import socket

        from flannelish.kernel import rtnl

        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                self.overrun = True
                continue
            now = time.time()
            with self._cond:
                for mtype, _flags, _seq, body, end in rtnl.messages(data):
                    if mtype not in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
                        continue
                    fields = rtnl.RTMSG.unpack_from(data, body)
                    if self.proto is not None and fields[5] != self.proto:
                        continue
                    attrs = rtnl.parse_attrs(data, body + rtnl.RTMSG.size, end)
                    kind6 = fields[0] == socket.AF_INET6
                    if rtnl.RTA_DST not in attrs or fields[1] == (128 if kind6 else 32):
                        continue
                    net = IPv6Network if kind6 else IPv4Network
                    dst: Net = net((bytes(attrs[rtnl.RTA_DST]), fields[1]))
                    kind = "add" if mtype == rtnl.RTM_NEWROUTE else "del"
                    if (kind, dst) in self.seen:
                        continue
                    self.seen[(kind, dst)] = now
                    if kind == "add" and dst in self.expect:
                        self.expected_seen += 1
                        self.last_expected = now
                        if self.expected_seen == len(self.expect):
                            self.all_seen.set()
                self._cond.notify_all()

    def wait(self, kind: str, dst: Net, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (kind, dst) not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timed out waiting for the kernel ({kind} {dst})")
                self._cond.wait(left)
            return self.seen[(kind, dst)]


def _wait(cond: Any, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the watch event")
        time.sleep(0.0002)
    return time.time()


def measure_inside(endpoint: str, peers: int, dual: bool = False) -> dict[str, list[float]]:
    """Per peer: lease put -> its route(s) in the kernel; ``dual``: dual-stack leases
    (both halves in the key and value), timed until BOTH routes, IPv4 and IPv6, are in."""
    import pyetcd

    host, port = endpoint.split("//")[1].rsplit(":", 1)
    client = pyetcd.client(host=host, port=int(port))
    routes = RouteEvents(proto=-1)

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
    add4_ms, add6_ms = [], []  # --dual-stack: each family's route on its own

    def nets(i: int) -> list[Net]:
        # The daemon's own subnets are among the first 100 of each pool.
        v6: list[Net] = [IPv6Network(f"fd44:0:0:{150 + i:x}::/64")] if dual else []
        return [IPv4Network(f"10.244.{150 + i}.0/24"), *v6]

    def lease_key(i: int) -> str:
        v4, *v6 = nets(i)
        return KEYS.subnet(v4, v6[0] if v6 else None)  # type: ignore[arg-type]

    for i in range(peers):
        t0 = time.time()
        ip6 = f"fd18::1:{i + 1:x}" if dual else None
        client.put(lease_key(i), lease_value(i, f"198.18.1.{1 + i}", ip6))
        took = [(routes.wait("add", net) - t0) * 1000 for net in nets(i)]
        add_ms.append(max(took))  # both routes in the kernel
        if dual:
            add4_ms.append(took[0])
            add6_ms.append(took[1])
    for i in range(peers):
        t0 = time.time()
        client.delete(lease_key(i))
        del_ms.append(max((routes.wait("del", net) - t0) * 1000 for net in nets(i)))
    out = {"watch": watch_ms, "add": add_ms, "delete": del_ms}
    if dual:
        out.update(add_ipv4=add4_ms, add_ipv6=add6_ms)
    return out


def report(results: dict[str, list[float]]) -> None:
    base50 = statistics.median(results["watch"])
    base99 = pct(results["watch"], 99)
    print(f"{'':38}{'p50 ms':>9}{'p99 ms':>9}{'x base p50':>12}{'x base p99':>12}")
    dual = "add_ipv6" in results
    rows = [
        ("baseline: etcd put -> watch event", results["watch"]),
        ("daemon: lease put -> route" + ("s (both)" if dual else " in kernel"), results["add"]),
        ("daemon: lease delete -> route" + ("s gone" if dual else " gone"), results["delete"]),
    ]
    if dual:
        rows[2:2] = [("  IPv4 route alone", results["add_ipv4"]),
                     ("  IPv6 route alone", results["add_ipv6"])]  # fmt: skip
    for name, values in rows:
        p50, p99 = statistics.median(values), pct(values, 99)
        print(f"{name:38}{p50:9.2f}{p99:9.2f}{p50 / base50:12.1f}{p99 / base99:12.1f}")
    p99_add = pct(results["add"], 99)
    verdict = "MET" if p99_add < 200 else "MISSED"
    what = "add (both routes) p99" if dual else "add p99"
    print(f"goal: {what} < 200 ms -> {p99_add:.1f} ms {verdict} (n={len(results['add'])})")


# -- population mode: N peers, cold sync, then per-event latency ----------

POP_NETWORK = IPv4Network("10.0.0.0/8")
POP_CONFIG = '{"Network":"10.0.0.0/8","SubnetLen":26,"Backend":{"Type":"vxlan"}}'
POP_UNDERLAY = IPv4Network("198.18.0.0/16")  # hosts on 198.18.0.x, simulated nodes from .1.1
POP_FIRST = int(IPv4Address("10.1.0.0"))  # the population's /26s
EXTRA_FIRST = int(IPv4Address("10.200.0.0"))  # the leases written one at a time
LEASE_TTL = 24 * 3600  # Flannel's lease TTL
TXN_OPS = 100  # puts per etcd transaction (etcd's default --max-txn-ops is 128)


def pop_subnet(i: int) -> IPv4Network:
    return IPv4Network((POP_FIRST + 64 * i, 26))


def extra_subnet(j: int) -> IPv4Network:
    return IPv4Network((EXTRA_FIRST + 64 * j, 26))


def pop_ip(i: int) -> str:
    """Simulated node i's PublicIP: distinct, on the underlay (198.18.1.1 ...)."""
    return f"198.18.{1 + i // 250}.{1 + i % 250}"


def pop_mac(i: int) -> str:
    return f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}"


def subnet_key(net: IPv4Network) -> str:
    return KEYS.subnet(net)


def subnets_in_etcd(cluster: BenchCluster) -> set[IPv4Network]:
    """The subnets of every lease key in the cluster's etcd (etcdctl, from outside)."""
    out = cluster.etcd.etcdctl("get", KEYS.subnets, "--prefix", "--keys-only").stdout
    keys = out.decode() if isinstance(out, bytes) else out
    found = (KEYS.parse(line.strip()) for line in keys.splitlines() if line.strip())
    return {x[0] for x in found if x is not None}


def _client(endpoint: str) -> Any:
    import pyetcd

    host, port = endpoint.split("//")[1].rsplit(":", 1)
    return pyetcd.client(host=host, port=int(port), timeout=30)


def _grant(client: Any, count: int) -> list[int]:
    """One etcd lease per simulated node, as every real node holds its own."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: int(client.lease(LEASE_TTL).id), range(count)))


def write_population(endpoint: str, n: int) -> float:
    """Write N leases in Flannel's schema (etcd transactions of TXN_OPS puts); seconds taken."""
    client = _client(endpoint)
    started = time.monotonic()
    ids = _grant(client, n)
    batches = [range(i, min(n, i + TXN_OPS)) for i in range(0, n, TXN_OPS)]

    def write(batch: range) -> None:
        ops = [
            client.transactions.put(
                subnet_key(pop_subnet(i)), lease_value(i, pop_ip(i)), lease=ids[i]
            )
            for i in batch
        ]
        client.transaction(compare=[], success=ops, failure=[])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, batches))
    return time.monotonic() - started


def measure_events(
    endpoint: str, netns: dict[str, str], n: int, events: int, gap: float, avoid: list[str]
) -> dict[str, Any]:
    """Inside the writer's namespace: K leases put one at a time, `gap` apart, then deleted.

    Puts follow a fixed schedule (not "after the previous route"), so a slow
    daemon's backlog shows in its latencies.  Every daemon's kernel is watched
    through its own multicast socket, opened in its namespace.
    """
    client = _client(endpoint)
    listeners = {name: RouteEvents(netns=ns) for name, ns in netns.items()}

    # Baseline: plain watch latency, same etcd, same namespace.
    seen: dict[str, float] = {}
    cond = threading.Condition()
    watch_events, cancel = client.watch_prefix("/bench/baseline/")

    def consume() -> None:
        for ev in watch_events:
            with cond:
                seen[ev.key.decode()] = time.time()
                cond.notify_all()

    threading.Thread(target=consume, daemon=True).start()
    time.sleep(0.2)
    watch_ms = []
    for i in range(events):
        key = f"/bench/baseline/{i}"
        t0 = time.time()
        client.put(key, "x")
        with cond:
            cond.wait_for(partial(seen.__contains__, key), timeout=5)
        watch_ms.append((seen[key] - t0) * 1000)
        time.sleep(gap / 4)
    cancel()

    taken = {IPv4Network(a) for a in avoid}
    subnets = [s for s in (extra_subnet(j) for j in range(events + len(taken))) if s not in taken]
    subnets = subnets[:events]
    ids = _grant(client, events)
    out: dict[str, Any] = {"watch": watch_ms, "add": {}, "delete": {}, "missing": {}}
    for kind in ("add", "delete"):
        put_at: dict[IPv4Network, float] = {}
        start = time.monotonic() + 0.05
        for j, subnet in enumerate(subnets):
            delay = start + j * gap - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.time()
            if kind == "add":
                client.put(subnet_key(subnet), lease_value(n + j, pop_ip(n + j)), lease=ids[j])
            else:
                client.delete(subnet_key(subnet))
            put_at[subnet] = t0
        out[f"{kind}_at"] = list(put_at.values())
        route = "add" if kind == "add" else "del"
        for name, routes in listeners.items():
            samples, missing = [], 0
            for subnet, t0 in put_at.items():
                try:
                    samples.append((routes.wait(route, subnet, timeout=10) - t0) * 1000)
                except RuntimeError:
                    missing += 1
            out[kind][name] = samples
            out["missing"][f"{name} {kind}"] = missing
        time.sleep(0.5)
    return out


def iproute_batch(
    cluster: BenchCluster, n: int, name: str = "base", nexthops: bool = False
) -> float:
    """iproute2 programming N peers on a hand-made vxlan device in a fresh namespace.

    Flannel's 3N entries (neighbour, FDB entry, route via the peer's VTEP), or with
    ``nexthops`` the 4N flannelish writes (each route through a nexthop object;
    backends/vxlan.py, docs/performance.md).  Same kernel, same batches otherwise."""
    host = cluster.add_host(name)
    ns = ["ip", "-n", host.netns]
    subprocess.run([*ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local",
                    str(host.ip), "dev", "eth0", "dstport", "8472", "nolearning"],
                   check=True)  # fmt: skip
    subprocess.run([*ns, "link", "set", "flannel.1", "up"], check=True)
    ip_cmds, fdb_cmds = [], []
    for i in range(n):
        net, mac = pop_subnet(i), pop_mac(i)
        gw = net.network_address
        ip_cmds.append(f"neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent")
        fdb_cmds.append(f"fdb replace {mac} dev flannel.1 dst {pop_ip(i)} self permanent")
        if nexthops:
            nhid = nexthop_id(net)
            ip_cmds.append(f"nexthop replace id {nhid} via {gw} dev flannel.1 onlink proto 70")
            ip_cmds.append(f"route replace {net} nhid {nhid} proto 70")
        else:
            ip_cmds.append(f"route replace {net} via {gw} dev flannel.1 onlink proto 70")
    started = time.monotonic()
    subprocess.run(["bridge", "-n", host.netns, "-batch", "-"], input="\n".join(fdb_cmds),
                   text=True, check=True)  # fmt: skip
    subprocess.run([*ns, "-batch", "-"], input="\n".join(ip_cmds), text=True, check=True)
    return time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def py_spy(pid: int, out: Path, wait_python: bool = False) -> subprocess.Popen[bytes] | None:
    """Sample a daemon (every thread, also idle ones) with py-spy until stopped with SIGINT."""
    binary = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not os.access(binary, os.X_OK):
        print("profile: py-spy not found (pip install py-spy), not profiling")
        return None
    deadline = time.monotonic() + 5
    while wait_python and time.monotonic() < deadline:  # `ip netns exec` has exec'd python
        with contextlib.suppress(OSError):
            if "python" in os.readlink(f"/proc/{pid}/exe"):
                break
        time.sleep(0.005)
    return subprocess.Popen(
        [binary, "record", "-p", str(pid), "--threads", "--idle", "--nonblocking",
         "--format", "raw", "-r", "200", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cold_start(
    cluster: BenchCluster,
    name: str,
    n: int,
    start: Any,
    timeout: float = 180,
    profile: Path | None = None,
    expect: set[IPv4Network] | None = None,
) -> dict[str, Any]:
    """Start one daemon in a new host namespace: start -> subnet.env, start -> all N routes.

    `expect`: the peers' subnets (default: the population's N); ``routes`` in the
    result is the namespace's RouteEvents (for later waits; not JSON)."""
    host = cluster.add_host(name)
    if expect is None:
        expect = {pop_subnet(i) for i in range(n)}
    n = len(expect)
    routes = RouteEvents(netns=host.netns, expect=expect)
    started = time.time()
    proc = start(host)
    spy = py_spy(proc.pid, profile, wait_python=True) if profile else None
    cluster.wait_subnet_file(host, proc, timeout=timeout)
    env_at = time.time()
    rss_env = memory_kb(proc.pid)["VmRSS"]
    all_seen = routes.all_seen.wait(timeout)
    rss_synced = memory_kb(proc.pid)["VmRSS"]
    stop_py_spy(spy)
    if not all_seen:
        raise RuntimeError(f"{name}: {routes.expected_seen}/{n} routes after {timeout} s")
    return {
        "host": host,
        "routes": routes,
        "pid": proc.pid,
        "netns": host.netns,
        "subnet": str(cluster.subnet(host)),
        "env_s": env_at - started,
        "routes_s": routes.last_expected - started,
        "overrun": routes.overrun,
        "rss_env_kb": rss_env,  # at subnet.env: the process before any peer
        "rss_synced_kb": rss_synced,  # when the last route appeared
    }


def population(args: argparse.Namespace) -> int:
    n, env = args.population, {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"}
    flanneld = os.environ.get("FLANNELD_BIN")
    if not flanneld:
        print("flanneld: FLANNELD_BIN not set, side-by-side comparison skipped")
    elif not os.access(flanneld, os.X_OK):
        print(f"flanneld: FLANNELD_BIN={flanneld} is not executable, comparison skipped")
        flanneld = None
    load_before = os.getloadavg()
    res: dict[str, Any] = {
        "peers": n, "events": args.events, "gap_s": args.gap, "idle_s": args.idle,
    }  # fmt: skip
    with BenchCluster(underlay_network=POP_UNDERLAY) as cluster:
        cluster.etcd.etcdctl("put", KEYS.config, POP_CONFIG)
        writer = cluster.add_host("wr")
        out = subprocess.run(
            ["ip", "netns", "exec", writer.netns, sys.executable, __file__,
             "--write-population", str(n), "--inside", cluster.endpoint],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        res["write_s"] = float(out.stdout.strip().splitlines()[-1])
        # Three fresh namespaces each: on a shared machine one sample swings 2-3x.
        runs = sorted(iproute_batch(cluster, n, f"base{i}") for i in range(3))
        res["iproute2_s"], res["iproute2_runs"] = runs[1], runs
        runs = sorted(iproute_batch(cluster, n, f"nhb{i}", nexthops=True) for i in range(3))
        res["iproute2_nexthops_s"], res["iproute2_nexthops_runs"] = runs[1], runs
        daemons: dict[str, dict[str, Any]] = {}
        # flanneld first, so flannelish's cold sync does not share the CPUs with
        # flanneld's (it idles meanwhile; flannelish's periodic pass would not).
        if flanneld:
            daemons["flanneld"] = cold_start(
                cluster, "fd", n, lambda h: cluster.start_flanneld(h, flanneld)
            )
            time.sleep(1)
        flags = ["--log-format", "json"]
        if args.resync_interval:
            flags += ["--resync-interval", str(args.resync_interval)]
        profile = Path(args.profile) if args.profile else None
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
        daemons["flannelish"] = cold_start(
            cluster,
            "fl",
            n,
            lambda h: cluster.start_daemon(h, *flags, wait=False),
            profile=profile / f"cold-{n}.txt" if profile else None,
        )
        time.sleep(2)  # settle: first full pass done, watch idle
        pid = daemons["flannelish"]["pid"]
        spy = py_spy(pid, profile / f"events-{n}.txt") if profile else None
        spec = json.dumps({
            "netns": {k: v["netns"] for k, v in daemons.items()},
            "n": n, "events": args.events, "gap": args.gap,
            "avoid": [v["subnet"] for v in daemons.values()],
        })  # fmt: skip
        out = subprocess.run(
            ["ip", "netns", "exec", writer.netns, sys.executable, __file__,
             "--events-spec", spec, "--inside", cluster.endpoint],
            capture_output=True, text=True, timeout=900, env=env,
        )  # fmt: skip
        stop_py_spy(spy)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        # Idle: no lease changes, only periodic work (resync passes, renewals, checks).
        before = {k: cpu_seconds(v["pid"]) for k, v in daemons.items()}
        spy = py_spy(pid, profile / f"idle-{n}.txt") if profile else None
        time.sleep(args.idle)
        stop_py_spy(spy)
        for k, v in daemons.items():
            v["idle_cpu_pct"] = (cpu_seconds(v["pid"]) - before[k]) / args.idle * 100
        for d in daemons.values():
            d.update(memory_kb(d.pop("pid")))
            d.pop("host")
            d.pop("routes")
        res["daemons"] = daemons
        res.update(measured)
        if os.environ.get("FLANNELISH_BENCH_KEEP"):
            res["logs"] = str(cluster.tmp)
    res["load"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    report_population(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def _pp(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} / {pct(values, 99):.1f}"


def report_population(res: dict[str, Any]) -> None:
    n, daemons = res["peers"], res["daemons"]
    names = [x for x in ("flannelish", "flanneld") if x in daemons]
    fl, fd = daemons["flannelish"], daemons.get("flanneld")
    print(
        f"population: {n} peers (/26 of 10.0.0.0/8), {res['events']} leases written "
        f"{res['gap_s'] * 1000:.0f} ms apart, then deleted; {os.cpu_count()} CPUs, "
        f"load average {res['load'][0]} before, {res['load'][1]} after"
    )
    print(f"  (population written in {res['write_s']:.2f} s: one etcd lease per node, txn batches)")
    head = f"{'':40}" + "".join(f"{x:>16}" for x in names)
    print(head + (f"{'ratio fl/fd':>13}" if fd else ""))

    def row(label: str, cells: list[str], ratio: str = "") -> None:
        print(f"{label:40}" + "".join(f"{c:>16}" for c in cells) + f"{ratio:>13}")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if fd and b else ""

    row("cold: start -> subnet.env (s)", [f"{daemons[x]['env_s']:.3f}" for x in names],
        ratio(fl["env_s"], fd["env_s"]) if fd else "")  # fmt: skip
    row(f"cold: start -> all {n} routes (s)", [f"{daemons[x]['routes_s']:.3f}" for x in names],
        ratio(fl["routes_s"], fd["routes_s"]) if fd else "")  # fmt: skip
    sync = {x: daemons[x]["routes_s"] - daemons[x]["env_s"] for x in names}
    row("cold: subnet.env -> all routes (s)", [f"{sync[x]:.3f}" for x in names],
        ratio(sync["flannelish"], sync["flanneld"]) if fd else "")  # fmt: skip
    flannel_base = res["iproute2_s"]
    base = res.get("iproute2_nexthops_s", flannel_base)  # the entries flannelish writes
    for label, key, value in (
        (f"Flannel's {3 * n} entries", "iproute2_runs", flannel_base),
        (f"flannelish's {4 * n} (nexthops)", "iproute2_nexthops_runs", base),
    ):
        spread = ", ".join(f"{x:.3f}" for x in res.get(key, [value]))
        row(f"  baseline iproute2 -batch, {label}", [f"{value:.3f}"])
        print(f"{'    (median of 3 fresh namespaces:':40}{spread})")
    row("  ratio start->routes / iproute2, same entries",
        [f"{daemons[x]['routes_s'] / (base if x == 'flannelish' else flannel_base):.2f}x"
         for x in names])  # fmt: skip
    row("  ratio start->routes / iproute2, Flannel's",
        [f"{daemons[x]['routes_s'] / flannel_base:.2f}x" for x in names])  # fmt: skip
    for kind, label in (("add", "event: lease put -> route (ms p50/p99)"),
                        ("delete", "event: delete -> route gone (ms)")):  # fmt: skip
        cells = [_pp(res[kind].get(x, [])) for x in names]
        r = ""
        if fd and res[kind].get("flanneld"):
            a, b = res[kind]["flannelish"], res[kind]["flanneld"]
            r = f"{statistics.median(a) / statistics.median(b):.1f}/" + (
                f"{pct(a, 99) / pct(b, 99):.1f}x"
            )
        row(label, cells, r)
    row("  baseline: etcd put -> watch event (ms)", [_pp(res["watch"])])
    row("peak RSS, VmHWM (MB)", [f"{daemons[x]['VmHWM'] / 1024:.1f}" for x in names],
        ratio(fl["VmHWM"], fd["VmHWM"]) if fd else "")  # fmt: skip
    row("RSS at end, VmRSS (MB)", [f"{daemons[x]['VmRSS'] / 1024:.1f}" for x in names])
    row("  RSS at subnet.env / at sync (MB)",
        [f"{daemons[x]['rss_env_kb'] / 1024:.0f} / {daemons[x]['rss_synced_kb'] / 1024:.0f}"
         for x in names])  # fmt: skip
    row(f"idle CPU over {res['idle_s']:.0f} s (% of one CPU)",
        [f"{daemons[x]['idle_cpu_pct']:.1f}" for x in names])  # fmt: skip
    missing = {k: v for k, v in res["missing"].items() if v}
    if missing or any(daemons[x]["overrun"] for x in names):
        print(f"  WARNING: missing route events {missing}; overruns "
              f"{[x for x in names if daemons[x]['overrun']]}")  # fmt: skip
    goals = []
    if fd:
        for kind in ("add",):
            a, b = res[kind]["flannelish"], res[kind]["flanneld"]
            p50_ok = statistics.median(a) <= statistics.median(b)
            ok = p50_ok and pct(a, 99) <= pct(b, 99)
            goals.append(f"per-event p50/p99 <= flanneld: {'MET' if ok else 'MISSED'}")
        goals.append(
            f"cold start->routes faster than flanneld: "
            f"{'MET' if fl['routes_s'] < fd['routes_s'] else 'MISSED'}"
        )
    goals.append(
        f"cold <= 2x iproute2 (same entries): {'MET' if fl['routes_s'] <= 2 * base else 'MISSED'}"
    )
    if n >= 5000:
        goals.append(f"RSS < 60 MB: {'MET' if fl['VmHWM'] < 60 * 1024 else 'MISSED'}")
    print("goals: " + "; ".join(goals))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument(
        "--dual-stack",
        action="store_true",
        help="dual-stack network and leases: put -> both routes, IPv4 and IPv6, in the kernel",
    )
    parser.add_argument(
        "--population", type=int, metavar="N", help="N leases first, flanneld side by side"
    )
    parser.add_argument("--events", type=int, default=100, help="(--population) leases added")
    parser.add_argument("--gap", type=float, default=0.1, help="(--population) seconds apart")
    parser.add_argument(
        "--resync-interval", type=float, help="(--population) the daemon's, default its own"
    )
    parser.add_argument(
        "--idle", type=float, default=20, help="(--population) seconds of idle CPU measured"
    )
    parser.add_argument("--json", metavar="FILE", help="(--population) write the figures here")
    parser.add_argument(
        "--profile", metavar="DIR", help="(--population) py-spy samples of flannelish (raw)"
    )
    parser.add_argument("--inside", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--write-population", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--events-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside and args.write_population:
        print(f"{write_population(args.inside, args.write_population):.3f}")
        return 0
    if args.inside and args.events_spec:
        spec = json.loads(args.events_spec)
        result = measure_events(
            args.inside, spec["netns"], spec["n"], spec["events"], spec["gap"], spec["avoid"]
        )
        print(json.dumps(result))
        return 0
    if args.population:
        if not 1 <= args.population <= 60000 or not 1 <= args.events <= 2000:
            parser.error("--population must be 1..60000 and --events 1..2000")
        sys.path.insert(0, str(ROOT))
        return population(args)
    if not 1 <= args.peers <= 100:
        parser.error("--peers must be 1..100 (simulated subnets 10.244.150-249.0/24)")
    if args.inside:
        print(json.dumps(measure_inside(args.inside, args.peers, args.dual_stack)))
        return 0
    sys.path.insert(0, str(ROOT))
    from flannelish.testing.flannel import DUAL as DUAL_CONFIG
    from flannelish.testing.underlay import UNDERLAY_NETWORK6

    dual = ["--dual-stack"] if args.dual_stack else []
    kwargs: dict[str, Any] = (
        {"underlay_network6": UNDERLAY_NETWORK6, "config": DUAL_CONFIG} if dual else {}
    )
    with BenchCluster(**kwargs) as cluster:
        host = cluster.add_host("n1")
        cluster.start_daemon(host)
        out = subprocess.run(
            ["ip", "netns", "exec", host.netns, sys.executable, __file__,
             "--inside", cluster.endpoint, "--peers", str(args.peers), *dual],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"},
        )  # fmt: skip
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        stack = "dual-stack " if dual else ""
        print(f"convergence: 1 daemon, {args.peers} simulated {stack}peers, leases written "
              f"one at a time; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        results = json.loads(out.stdout.strip().splitlines()[-1])
        report(results)
        write_json(args.json, args.peers, results, bool(dual))
    return 0


def write_json(
    path: str | None, peers: int, results: dict[str, list[float]], dual: bool = False
) -> None:
    """--json without --population: bench/benchjson.py's format (output only).

    (--population writes its own document; bench/report.py reads both.)
    """
    from benchjson import Results

    params: dict[str, Any] = {"dual_stack": 1} if dual else {}
    out = Results("convergence", path, peers=peers, **params)
    base = results["watch"]
    # Dual-stack figures under their own prefix: both runs have 100 peers.
    pre = "convergence.dual_stack" if dual else "convergence"
    for name, values in results.items():
        out.samples(f"{pre}.{name}", values, "ms")
        if name == "watch":
            continue
        for q in (50, 99):
            goal = "< 200 ms" if name == "add" and q == 99 else None
            out.figure(
                f"{pre}.{name}.p{q}", pct(values, q), "ms", pct(base, q),
                "etcd watch", goal,
            )  # fmt: skip
    out.write()


if __name__ == "__main__":
    sys.exit(main())
