"""Shared pieces of the fault drills and the churn soak.

* :class:`SimWriter` - flannelish's etcd client in a helper process on the
  underlay (simwriter.py), for lease writes at a paced rate;
* :class:`SimPeers` - simulated peers: lease keys with fake PublicIPs in the
  underlay range and valid (unicast, locally administered) VTEP MACs, plus a
  deterministic churn schedule of adds, updates and removals;
* :class:`PingLoss` - a continuous ``ping -i 0.01`` from a pod namespace whose
  loss is counted from the reply sequence numbers;
* :func:`kernel_vs_etcd` - what one node's kernel (neigh, FDB, our routes, the
  nft peer set) lacks or has in excess compared with the leases in etcd;
* :func:`proc_figures` - a daemon's RSS and open FD count from /proc;
* :func:`start_underlay_cluster` - a 3-member etcd cluster on the underlay.

Everything runs inside namespaces the test created; nothing here touches the
root namespace.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from flannelish.testing.etcd import EtcdMember, start_etcd
from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run, stop_pid
from flannelish.testing.underlay import Host, Underlay

from .helpers import DaemonProc, add_pod, kernel_state, wait_for

PREFIX = "/coreos.com/network"
SUBNETS = f"{PREFIX}/subnets/"
# A /12 holds 4096 /24s: room for 500 simulated peers, their churn and the real nodes.
NETWORK = IPv4Network("10.240.0.0/12")
DRILL_CONFIG = json.dumps(
    {"Network": str(NETWORK), "SubnetLen": 24, "Backend": {"Type": "vxlan"}},
    separators=(",", ":"),
)
# Simulated subnets come from the upper half, PublicIPs from .10-.250 of the underlay
# (.1-.9: real hosts, .254: etcd and the gateway).
SIM_BASE = IPv4Network("10.248.0.0/13")
SIM_IPS = [f"198.18.0.{i}" for i in range(10, 251)]
WRITER = Path(__file__).with_name("simwriter.py")


def lease_key(subnet: IPv4Network) -> str:
    return f"{SUBNETS}{subnet.network_address}-{subnet.prefixlen}"


def key_subnet(key: str) -> IPv4Network:
    addr, plen = key.rsplit("/", 1)[1].split("&")[0].split("-")
    return IPv4Network(f"{addr}/{plen}")


def lease_value(public_ip: str, mac: str) -> str:
    return json.dumps(
        {"PublicIP": public_ip, "PublicIPv6": None, "BackendType": "vxlan",
         "BackendData": {"VNI": 1, "VtepMAC": mac}},
        separators=(",", ":"),
    )  # fmt: skip


# -- the etcd writer ------------------------------------------------------------


class SimWriter:
    """simwriter.py inside `netns`; request() sends one JSON line and waits for the answer."""

    def __init__(self, netns: str, endpoints: list[str], log_path: Path) -> None:
        self._stderr = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(WRITER), ",".join(endpoints)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=dict(os.environ),
        )
        self.log_path = log_path
        first = self.recv(timeout=30)
        assert first.get("ready"), first

    def send(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise AssertionError(f"simwriter gave no answer in {timeout}s: {tail}")
        answer = json.loads(box[0])
        if not answer.get("ok"):
            raise AssertionError(f"simwriter failed: {answer.get('error')}")
        return answer

    def request(self, request: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        self.send(request)
        return self.recv(timeout)

    def put(self, items: list[tuple[str, str]]) -> None:
        self.request({"op": "put", "items": items})

    def delete(self, keys: list[str]) -> None:
        self.request({"op": "del", "keys": keys})

    def leases(self) -> dict[IPv4Network, dict[str, Any]]:
        """Every lease under the subnets prefix: subnet -> decoded value."""
        kvs = self.request({"op": "list", "prefix": SUBNETS})["kvs"]
        return {key_subnet(k): json.loads(v) for k, v in kvs}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "quit"})
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                stop_pid(self.proc.pid, proc=self.proc)
        self._stderr.close()


# -- simulated peers ---------------------------------------------------------------


@dataclass
class SimPeers:
    """A pool of candidate subnets; `active` are the ones with a lease in etcd."""

    taken: set[IPv4Network]  # real nodes' subnets: never simulated
    pool_size: int = 1000
    seed: int = 12
    active: dict[IPv4Network, tuple[str, str]] = field(default_factory=dict)  # -> (ip, mac)
    _gen: dict[IPv4Network, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        subnets = (s for s in SIM_BASE.subnets(new_prefix=24) if s not in self.taken)
        self.pool = [next(subnets) for _ in range(self.pool_size)]
        self._index = {s: i for i, s in enumerate(self.pool)}

    def _attrs(self, subnet: IPv4Network) -> tuple[str, str]:
        i, gen = self._index[subnet], self._gen.get(subnet, 0)
        mac = f"0e:5e:{gen & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}:01"
        return SIM_IPS[(i + gen) % len(SIM_IPS)], mac

    def _put(self, subnet: IPv4Network) -> list[Any]:
        self.active[subnet] = self._attrs(subnet)
        return ["put", lease_key(subnet), lease_value(*self.active[subnet])]

    def add(self, subnet: IPv4Network) -> list[Any]:
        return self._put(subnet)

    def update(self, subnet: IPv4Network, what: str = "both") -> list[Any]:
        """A new generation: new MAC and/or new PublicIP (keeps the other when asked)."""
        old = self.active[subnet]
        self._gen[subnet] = self._gen.get(subnet, 0) + 1
        ip, mac = self._attrs(subnet)
        if what == "mac":
            ip = old[0]
        elif what == "ip":
            mac = old[1]
        self.active[subnet] = (ip, mac)
        return ["put", lease_key(subnet), lease_value(ip, mac)]

    def remove(self, subnet: IPv4Network) -> list[Any]:
        del self.active[subnet]
        return ["del", lease_key(subnet)]

    def populate(self, n: int) -> list[tuple[str, str]]:
        ops = [self.add(s) for s in self.pool[:n]]
        return [(op[1], op[2]) for op in ops]

    def churn(self, count: int, target: int) -> tuple[list[list[Any]], dict[str, int]]:
        """`count` events keeping about `target` peers active: ~1/3 each add/update/remove."""
        ops: list[list[Any]] = []
        kinds = {"add": 0, "update": 0, "remove": 0}
        for _ in range(count):
            r = self.rng.random()
            drift = (len(self.active) - target) / max(target, 1)
            if r < 1 / 3 - drift or not self.active:
                kind = "add"
            elif r < 2 / 3:
                kind = "update"
            else:
                kind = "remove"
            if kind == "add":
                idle = [s for s in self.pool if s not in self.active]
                ops.append(self.add(self.rng.choice(idle)))
            else:
                victim = self.rng.choice(sorted(self.active))
                if kind == "update":
                    ops.append(self.update(victim, self.rng.choice(("mac", "ip", "both"))))
                else:
                    ops.append(self.remove(victim))
            kinds[kind] += 1
        return ops, kinds


# -- continuous ping -----------------------------------------------------------------

_REPLY = re.compile(r"icmp_seq=(\d+)")


@dataclass
class PingResult:
    sent: int  # sequence numbers up to the last reply (later ones were still in flight)
    received: int
    lost: int
    longest_gap_s: float  # longest time without a reply
    summary: str

    def __str__(self) -> str:
        return (
            f"{self.lost} lost of {self.sent} ({self.received} replies), "
            f"longest gap {self.longest_gap_s * 1000:.0f} ms"
        )


class PingLoss:
    """``ping -i 0.01`` from `netns` to `dst` in the background.

    Loss is counted from reply sequence numbers: every number up to the last
    reply that has no reply is lost.  stop() first waits (up to `settle` s)
    for a reply to a packet sent after the stop request, so a data path that
    is broken at the end is counted too and packets merely in flight are not.
    """

    def __init__(self, netns: str, dst: Any, interval: float = 0.01) -> None:
        self.interval = interval
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "stdbuf", "-oL", "ping", "-n", "-i", str(interval),
             "-W", "1", str(dst)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.replies: set[int] = set()
        self.max_seq = 0
        self.last_reply = time.monotonic()
        self.longest_gap = 0.0
        self.started = time.monotonic()
        self.tail: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = _REPLY.search(line)
            if match and "bytes from" in line:
                seq, now = int(match.group(1)), time.monotonic()
                with self._lock:
                    self.replies.add(seq)
                    self.max_seq = max(self.max_seq, seq)
                    self.longest_gap = max(self.longest_gap, now - self.last_reply)
                    self.last_reply = now
            elif line.strip():
                self.tail = [*self.tail[-5:], line.rstrip()]

    def wait_first_reply(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.replies:
                with self._lock:
                    self.last_reply = time.monotonic()
                    self.longest_gap = 0.0
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"no ping reply in {timeout}s: {self.tail}")

    def snapshot(self) -> tuple[int, int]:
        """(highest seq answered, replies) so far."""
        with self._lock:
            return self.max_seq, len(self.replies)

    def stop(self, settle: float = 3.0) -> PingResult:
        mark = self.max_seq
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and self.max_seq <= mark + 1:
            time.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            stop_pid(self.proc.pid, proc=self.proc)
        self._reader.join(timeout=5)
        with self._lock:
            first = min(self.replies) if self.replies else 1
            top = self.max_seq
            # Not answered at all: everything since the first reply is lost.
            if self.max_seq <= mark + 1:
                top = max(top, mark + int(settle / self.interval))
            sent = top - first + 1
            received = len([s for s in self.replies if s >= first])
            return PingResult(
                sent, received, sent - received, self.longest_gap, " | ".join(self.tail[-2:])
            )


# -- kernel vs etcd ------------------------------------------------------------------------


def expected_state(
    leases: dict[IPv4Network, dict[str, Any]], own: IPv4Network
) -> dict[str, list[Any]]:
    """What a VXLAN node with lease `own` must have for these leases (kernel_state's form)."""
    neigh, fdb, route, peers = [], [], [], set()
    for subnet, value in leases.items():
        if subnet == own:
            continue
        gw, mac = str(subnet.network_address), value["BackendData"]["VtepMAC"]
        neigh.append((gw, mac))
        fdb.append((mac, value["PublicIP"]))
        route.append((str(subnet), gw, "flannel.1"))
        peers.add(value["PublicIP"])
    return {"neigh": sorted(neigh), "fdb": sorted(fdb), "route": sorted(route),
            "nft": sorted(peers, key=IPv4Address)}  # fmt: skip


def nft_peer_set(host: Host) -> list[str] | None:
    """Elements of `table ip flannelish` set vxlan_peers (None: no such table/set)."""
    result = host.run("nft", "-j", "list", "set", "ip", "flannelish", "vxlan_peers", check=False)
    if result.returncode != 0:
        return None
    out: list[str] = []
    for item in json.loads(result.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            out.append(elem if isinstance(elem, str) else json.dumps(elem))
    return sorted(out, key=IPv4Address)


def actual_state(host: Host) -> dict[str, list[Any]]:
    state = kernel_state(host)
    state["nft"] = nft_peer_set(host) or []
    return state


def kernel_vs_etcd(
    host: Host, leases: dict[IPv4Network, dict[str, Any]], own: IPv4Network
) -> dict[str, dict[str, list[Any]]]:
    """{kind: {"missing": [...], "extra": [...]}} for every kind that differs ({}: equal)."""
    want, have = expected_state(leases, own), actual_state(host)
    out = {}
    for kind, objs in want.items():
        missing = sorted(set(objs) - set(have[kind]))
        extra = sorted(set(have[kind]) - set(objs))
        if missing or extra:
            out[kind] = {"missing": missing[:5], "extra": extra[:5],
                         "counts": [len(missing), len(extra)]}  # fmt: skip
    return out


def wait_converged(
    host: Host, writer: SimWriter, own: IPv4Network, timeout: float
) -> tuple[float, dict[str, Any]]:
    """Poll until kernel == etcd; (seconds taken, last difference). Leases are read once."""
    leases = writer.leases()
    started = time.monotonic()
    deadline = started + timeout
    while True:
        difference = kernel_vs_etcd(host, leases, own)
        if not difference or time.monotonic() > deadline:
            return time.monotonic() - started, difference
        time.sleep(0.1)


def route_count(host: Host) -> int:
    out = host.run("ip", "-4", "route", "show", "proto", "70").stdout
    return out.count("\n")


# -- process figures -------------------------------------------------------------------


def proc_figures(pid: int) -> dict[str, int]:
    """RSS (kB), open FDs and threads of a live process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


# -- a 3-member etcd cluster on the underlay ---------------------------------------------


@dataclass
class UnderlayCluster:
    members: list[EtcdMember]
    netns: str

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def status(self) -> list[dict[str, Any]]:
        live = [m.client_url for m in self.members if m.running]
        result = run(
            ["etcdctl", f"--endpoints={','.join(live)}", "--dial-timeout=1s",
             "--command-timeout=2s", "endpoint", "status", "-w", "json"],
            netns=self.netns, check=False,
        )  # fmt: skip
        return json.loads(result.stdout) if result.stdout.strip() else []

    def leader(self, timeout: float = 10.0) -> EtcdMember:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for st in self.status():
                header = st["Status"]["header"]
                if header["member_id"] == st["Status"].get("leader"):
                    return next(m for m in self.members if m.client_url == st["Endpoint"])
            time.sleep(0.1)
        raise AssertionError("no etcd leader")

    def destroy(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                os.kill(m.proc.pid, signal.SIGCONT)  # a frozen member must be able to stop
            m.destroy()


def start_underlay_cluster(underlay: Underlay, tmp: Path) -> UnderlayCluster:
    """Three members on the underlay bridge address (own ports, own data dirs)."""
    host = str(underlay.gateway)
    members = [
        EtcdMember(
            name=f"e{i}",
            host=host,
            netns=underlay.netns,
            client_port=2379 + 10000 * i,
            peer_port=2380 + 10000 * i,
            data_dir=tmp / f"e{i}" / "data",
            cluster_token="drills",
        )
        for i in range(3)
    ]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    cluster = UnderlayCluster(members, underlay.netns)
    try:
        for m in members:
            m.start(initial_cluster=initial)
        for m in members:
            m.wait_healthy(timeout=30)
    except BaseException:
        cluster.destroy()
        raise
    return cluster


# -- the drill environment: etcd, writer, real nodes with a pod each ---------------------


@dataclass
class RealNode:
    daemon: DaemonProc
    pod: str

    @property
    def host(self) -> Host:
        return self.daemon.host

    @property
    def subnet(self) -> IPv4Network:
        return self.daemon.subnet

    @property
    def pod_ip(self) -> IPv4Address:
        return self.subnet.network_address + 2

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None


class DrillEnv:
    """An underlay, etcd on it (one member or three), the writer and real nodes."""

    def __init__(self, underlay: Underlay, factory: NetnsFactory, tmp: Path) -> None:
        self.underlay, self.factory, self.tmp = underlay, factory, tmp
        self.etcd: EtcdMember | None = None
        self.cluster: UnderlayCluster | None = None
        self.writer: SimWriter | None = None
        self.nodes: list[RealNode] = []
        self.endpoints: list[str] = []

    def start_etcd(self, members: int = 1) -> None:
        if members == 1:
            self.etcd = start_etcd(
                name="ul-etcd", host=str(self.underlay.gateway), netns=self.underlay.netns
            )
            self.endpoints = [self.etcd.client_url]
        else:
            self.cluster = start_underlay_cluster(self.underlay, self.tmp / "etcd")
            self.endpoints = self.cluster.endpoints
        self.writer = SimWriter(self.underlay.netns, self.endpoints, self.tmp / "writer.log")
        self.writer.put([(f"{PREFIX}/config", DRILL_CONFIG)])

    def start_nodes(self, n: int, *flags: str, endpoints: list[str] | None = None) -> None:
        daemons = []
        for i in range(1, n + 1):
            host = self.underlay.add_host(f"h{i}")
            eps = ",".join(endpoints or self.endpoints)
            daemons.append(DaemonProc(host, eps, self.tmp, "--iface", "eth0", *flags).start())
        for i, d in enumerate(daemons, 1):
            d.wait_ready()
            pod = add_pod(self.factory, d.host, d.subnet, f"p{i}", 1450)
            self.nodes.append(RealNode(d, pod))
        for node in self.nodes:
            others = [str(x.subnet) for x in self.nodes if x is not node]
            wait_for(lambda n=node, o=others: all(r in routes(n.host) for r in o), 15,
                     what=f"real peers on {node.host.name}")  # fmt: skip

    def ping(self, src: RealNode, dst: RealNode) -> PingLoss:
        pinger = PingLoss(src.pod, dst.pod_ip)
        pinger.wait_first_reply()
        return pinger

    @property
    def taken(self) -> set[IPv4Network]:
        return {n.subnet for n in self.nodes}

    def close(self) -> None:
        for node in self.nodes:
            node.daemon.stop()
        if self.writer is not None:
            self.writer.close()
        if self.cluster is not None:
            self.cluster.destroy()
        if self.etcd is not None:
            self.etcd.destroy()


def routes(host: Host) -> list[str]:
    return [r[0] for r in kernel_state(host)["route"]]


def etcd_members_used(host: Host, cluster: UnderlayCluster) -> list[str]:
    """Names of the members a host's processes hold established connections to (via ss)."""
    out = host.run("ss", "-Htn", "state", "established").stdout
    ports = {int(m) for m in re.findall(r"198\.18\.0\.254\]?:(\d+)", out)}
    return [m.name for m in cluster.members if m.client_port in ports]
