"""The hostile-etcd suite: bad leases written into a live network.

Shared by ``tests/daemon/test_hostile_etcd.py`` (flannelish only) and
``bench/hostile.py`` (flannelish and, with ``FLANNELD_BIN``, flanneld).  It
measures; it fixes nothing.  Test support, and long on purpose: every bad-lease
kind, its check and its expected reason sit in one table, so the test and the
benchmark run exactly the same definitions.

Topology (everything in namespaces the caller's NetnsFactory made)::

    pod1 10.244.1.2 ─ cni0 ─ n1 198.18.0.1  (node under test: ONE daemon)
    pod2 10.244.2.2 ─ cni0 ─ n2 198.18.0.2  (good peer, programmed statically
                                             by this harness, never a daemon, so
                                             no bad lease can break it)
    etcd on the underlay bridge 198.18.0.254

Good leases in etcd: n2 (10.244.2.0/24), g3 (10.244.3.0/24 @ 198.18.0.3, no
host behind it), and short-lived ones (g4, sentinels) written by the suite.

Stages (each check is one named row of the result table):

1. **isolated**: the bad kinds in four groups (semantic, undecodable values,
   the 5000-``[`` value, the underlay prefix).  Per group: write it, then a
   *barrier* (a good sentinel lease put and deleted: once it came and went,
   the daemon has seen everything written before it), then one row per
   kind: the kernel holds nothing of that kind's leases (compared with a
   baseline snapshot of routes (all tables), permanent neighbours and the
   VXLAN FDB), the daemon is alive and still applying events, and (flannelish)
   /status lists each of its leases as skipped with a reason.  If the group
   as a whole stopped the daemon, its kinds are measured again one by one,
   so the rows name the culprits.  Then the group's keys are deleted and,
   if anything is off, the harness puts the node back the way it was
   (restores lost baseline entries, removes leftovers, restarts the daemon),
   saying so in a note, so one kind's damage never decides another's row.
2. **all present**: every bad lease at once; the daemon keeps running, its
   default/connected routes and the good peers are untouched, ping crosses
   nodes, a good lease is programmed within 1 s and removed within 1 s of
   its deletion, and /status and /metrics name each skipped lease with a
   reason.  Then every bad key is deleted: nothing lost, nothing left.
3. **restart**: the daemon is stopped, every bad lease written, the daemon
   started: it comes up, serves good peers (old and new) and programs no
   bad lease.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import Any, NamedTuple

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run, stop_pid
from flannelish.testing.underlay import Host, Underlay

PREFIX = "/coreos.com/network"
NETWORK = IPv4Network("10.244.0.0/16")
BACKENDS = ("vxlan", "host-gw")
HEALTH_PORT = 9931
LEASE_TTL = 86400
DEV = "flannel.1"

NODE_SUBNET = IPv4Network("10.244.1.0/24")  # the node under test (pinned via subnet.env)
NODE_POD = "10.244.1.2"
PEER_SUBNET = IPv4Network("10.244.2.0/24")  # n2, the real good peer with a pod
PEER_POD = "10.244.2.2"
PEER_MAC = "0a:58:0a:f4:02:00"

FAST_S = 1.0  # the goal: a good change applied within 1 s while bad leases are present
BARRIER_S = 3.0  # how long a barrier waits before declaring the daemon stuck
SETTLE_S = 0.3  # after a barrier: let a pass that was under way finish

Status = dict[str, Any]


# -- leases ---------------------------------------------------------------------


@dataclass(frozen=True)
class BadLease:
    key: str  # the part after <prefix>/subnets/
    value: str
    subnet: IPv4Network | None = None  # None: the key is not a subnet key
    public_ip: str | None = None
    mac: str | None = None

    @property
    def etcd_key(self) -> str:
        return f"{PREFIX}/subnets/{self.key}"


@dataclass(frozen=True)
class Kind:
    name: str
    title: str
    leases: tuple[BadLease, ...]
    group: str  # "semantic" | "undecodable" | "nested" | "underlay"
    reported: bool = True  # must appear in /status and /metrics as skipped


def lease_json(backend: str, public_ip: str, mac: str | None = None, **extra: Any) -> str:
    doc: dict[str, Any] = {"PublicIP": public_ip, "PublicIPv6": None, "BackendType": backend}
    if backend == "vxlan":
        doc["BackendData"] = {"VNI": 1, "VtepMAC": mac}
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":"))


def fake_mac(n: int) -> str:
    return f"0e:00:00:00:00:{n:02x}"


def good_lease(backend: str, third_octet: int) -> BadLease:
    """A valid peer 10.244.N.0/24 @ 198.18.0.N (on-link, no host behind it)."""
    ip, mac = f"198.18.0.{third_octet}", fake_mac(third_octet)
    key = f"10.244.{third_octet}.0-24"
    return BadLease(key, lease_json(backend, ip, mac), _subnet(key), ip, mac)


def _subnet(key: str) -> IPv4Network:
    addr, _, plen = key.rpartition("-")
    return IPv4Network(f"{addr}/{plen}")


def _bad(backend: str, key: str, ip: str, mac: str | None = None, **extra: Any) -> BadLease:
    return BadLease(key, lease_json(backend, ip, mac, **extra), _subnet(key), ip, mac)


def bad_kinds(backend: str, underlay: IPv4Network) -> list[Kind]:
    """Every kind of bad lease, with the values for this backend."""
    b, vx = backend, backend == "vxlan"
    other = "host-gw" if vx else "vxlan"
    ul_key = f"{underlay.network_address}-{underlay.prefixlen}"
    pad = "x" * 1_400_000  # three of these: a listing above gRPC's 4 MiB receive default
    kinds = [
        Kind("outside-network", "subnet outside Network (8.8.8.8-32)",
             (_bad(b, "8.8.8.8-32", "198.18.0.71", fake_mac(71)),), "semantic"),
        Kind("huge-prefix", "huge prefix (128.0.0.0-1)",
             (_bad(b, "128.0.0.0-1", "198.18.0.72", fake_mac(72)),), "semantic"),
        Kind("underlay-prefix", f"the underlay prefix ({ul_key})",
             (_bad(b, ul_key, "198.18.0.73", fake_mac(73)),), "underlay"),
        Kind("default-route", "default route (0.0.0.0-0)",
             (_bad(b, "0.0.0.0-0", "198.18.0.74", fake_mac(74)),), "semantic"),
        Kind("slice-of-peer", "/25 slice of a good peer's /24, foreign PublicIP (10.244.2.0-25)",
             (_bad(b, "10.244.2.0-25", "198.18.0.75", fake_mac(75)),), "semantic"),
        Kind("slice-of-own", "/25 slice of our own /24, foreign PublicIP (10.244.1.128-25)",
             (_bad(b, "10.244.1.128-25", "198.18.0.76", fake_mac(76)),), "semantic"),
        Kind("wrong-subnetlen", "wrong SubnetLen inside Network (10.244.32.0-20)",
             (_bad(b, "10.244.32.0-20", "198.18.0.77", fake_mac(77)),), "semantic"),
        Kind("publicip-in-pod-network", "PublicIP inside the pod network (10.244.2.2)",
             (_bad(b, "10.244.100.0-24", PEER_POD, fake_mac(100)),), "semantic"),
        Kind("publicip-own", "PublicIP = the node's own (198.18.0.1)",
             (_bad(b, "10.244.101.0-24", "198.18.0.1", fake_mac(101)),), "semantic"),
        Kind("publicip-not-unicast", "PublicIP multicast/loopback/unspecified/broadcast",
             (_bad(b, "10.244.102.0-24", "224.0.0.1", fake_mac(102)),
              _bad(b, "10.244.103.0-24", "127.0.0.1", fake_mac(103)),
              _bad(b, "10.244.104.0-24", "0.0.0.0", fake_mac(104)),
              _bad(b, "10.244.105.0-24", "255.255.255.255", fake_mac(105))), "semantic"),
    ]  # fmt: skip
    if vx:
        kinds += [
            Kind("dup-vtep-mac", "a peer reusing a good peer's VTEP MAC",
                 (_bad(b, "10.244.106.0-24", "198.18.0.78", PEER_MAC),), "semantic"),
            Kind("invalid-vtep-mac", "invalid VtepMAC (syntax, broadcast, missing)",
                 (_bad(b, "10.244.107.0-24", "198.18.0.79", "zz:zz:zz:zz:zz:zz"),
                  _bad(b, "10.244.108.0-24", "198.18.0.80", "ff:ff:ff:ff:ff:ff"),
                  _bad(b, "10.244.109.0-24", "198.18.0.81", None)), "semantic"),
        ]  # fmt: skip
    kinds += [
        Kind("wrong-backend", f"BackendType {other} in a {backend} network",
             (_bad(other, "10.244.110.0-24", "198.18.0.82", fake_mac(82)),), "semantic"),
        Kind("bad-key", "keys that are not subnet keys (not-a-subnet, 10.244.111.0-33)",
             (BadLease("not-a-subnet", lease_json(b, "198.18.0.83", fake_mac(83))),
              BadLease("10.244.111.0-33", lease_json(b, "198.18.0.84", fake_mac(84)))),
             "undecodable", reported=False),
        Kind("non-json", "a value that is not JSON",
             (BadLease("10.244.112.0-24", '{"PublicIP": "198.18.0.85", oops',
                       _subnet("10.244.112.0-24"), "198.18.0.85"),), "undecodable"),
        Kind("oversized", "~1.4 MB values x3 (listing > 4 MiB)",
             tuple(_bad(b, f"10.244.{n}.0-24", f"198.18.0.{n - 27}", fake_mac(n), Pad=pad)
                   for n in (113, 114, 115)), "undecodable"),
        Kind("nested-json", "a value of 5000 '['",
             (BadLease("10.244.116.0-24", "[" * 5000, _subnet("10.244.116.0-24")),), "nested"),
    ]  # fmt: skip
    return kinds


# -- kernel snapshots --------------------------------------------------------------


class RouteE(NamedTuple):
    table: str
    dst: str
    gateway: str | None
    dev: str | None
    protocol: str | None
    scope: str | None
    type: str
    prefsrc: str | None
    onlink: bool

    def text(self) -> str:
        parts = [self.type if self.type != "unicast" else "", self.dst]
        if self.gateway:
            parts += ["via", self.gateway]
        if self.dev:
            parts += ["dev", self.dev]
        parts += [f"proto {self.protocol}" if self.protocol else "", f"table {self.table}"]
        return "route " + " ".join(p for p in parts if p)


class NeighE(NamedTuple):
    dst: str
    dev: str
    lladdr: str | None

    def text(self) -> str:
        return f"neigh {self.dst} lladdr {self.lladdr} dev {self.dev}"


class FdbE(NamedTuple):
    mac: str
    dev: str
    dst: str

    def text(self) -> str:
        return f"fdb {self.mac} dst {self.dst} dev {self.dev}"


Entry = RouteE | NeighE | FdbE


def _norm_dst(dst: str) -> str:
    if dst == "default":
        return "0.0.0.0/0"
    return dst if "/" in dst else f"{dst}/32"


def _json(host: Host, *argv: str) -> list[dict[str, Any]]:
    out = run(argv, check=False, timeout=10).stdout
    try:
        doc = json.loads(out or "[]")
    except ValueError:
        return []
    return doc if isinstance(doc, list) else []


def snapshot(host: Host) -> frozenset[Entry]:
    """Routes of every table, permanent neighbours, the VXLAN device's FDB (if any)."""
    ns = host.netns
    entries: set[Entry] = set()
    for r in _json(host, "ip", "-n", ns, "-4", "-j", "route", "show", "table", "all"):
        entries.add(RouteE(
            str(r.get("table", "main")), _norm_dst(str(r.get("dst", ""))), r.get("gateway"),
            r.get("dev"), str(r["protocol"]) if "protocol" in r else None, r.get("scope"),
            str(r.get("type", "unicast")), r.get("prefsrc"), "onlink" in r.get("flags", []),
        ))  # fmt: skip
    for n in _json(host, "ip", "-n", ns, "-4", "-j", "neigh", "show", "nud", "permanent"):
        entries.add(NeighE(str(n.get("dst")), str(n.get("dev")), n.get("lladdr")))
    if run(["ip", "-n", ns, "link", "show", DEV], check=False).returncode == 0:
        for f in _json(host, "bridge", "-n", ns, "-j", "fdb", "show", "dev", DEV):
            if f.get("dst"):
                entries.add(FdbE(str(f.get("mac")), DEV, str(f["dst"])))
    return frozenset(entries)


def belongs(entry: Entry, lease: BadLease) -> bool:
    """Could the daemon have made this entry for `lease`? (its subnet, gateway, MAC or IP)"""
    if isinstance(entry, RouteE):
        return lease.subnet is not None and entry.dst == str(lease.subnet)
    if isinstance(entry, NeighE):
        return same_key(entry, lease) or (lease.mac is not None and entry.lladdr == lease.mac)
    return same_key(entry, lease) or entry.dst == lease.public_ip


def same_key(entry: Entry, lease: BadLease) -> bool:
    """Does this entry sit where the daemon would put `lease`'s (route dst, neigh IP, FDB MAC)?

    A lost entry is blamed on a lease only by key: a slice of n2's /24 that
    replaced n2's neighbour is blamed for it, a lease that merely reuses n2's
    MAC is not.
    """
    if lease.subnet is None and not isinstance(entry, FdbE):
        return False
    if isinstance(entry, RouteE):
        return entry.dst == str(lease.subnet)
    if isinstance(entry, NeighE):
        return entry.dst == str(lease.subnet.network_address)  # type: ignore[union-attr]
    return lease.mac is not None and entry.mac == lease.mac


def footprint(
    base: frozenset[Entry], now: frozenset[Entry], leases: Iterable[BadLease]
) -> list[str]:
    """Entries added for one of `leases`, and baseline entries lost where theirs would sit."""
    mine = list(leases)
    out = [f"+{e.text()}" for e in sorted(now - base, key=str) if any(belongs(e, x) for x in mine)]
    return out + [
        f"-{e.text()}" for e in sorted(base - now, key=str) if any(same_key(e, x) for x in mine)
    ]


def is_base_route(e: Entry) -> bool:
    """The node's own routes: default, connected (proto kernel), the local table."""
    return isinstance(e, RouteE) and (
        e.dst == "0.0.0.0/0" or e.protocol == "kernel" or e.table == "local"
    )


def summary(items: Sequence[str], limit: int = 3) -> str:
    head = ", ".join(items[:limit])
    return head + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


# -- the etcd writer: one long-lived client inside the underlay namespace ------------------

_AGENT = r"""
import base64, json, sys, time, urllib.request
url = sys.argv[1]
def call(path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.loads(r.read() or b"{}")
def b64(s):
    return base64.b64encode(s.encode("utf-8", "surrogateescape")).decode()
for line in sys.stdin:
    out = []
    try:
        for op in json.loads(line):
            if op["op"] == "grant":
                out.append(call("/v3/lease/grant", {"TTL": op["ttl"]})["ID"])
            elif op["op"] == "put":
                body = {"key": b64(op["key"]), "value": b64(op["value"])}
                if op.get("lease"):
                    body["lease"] = op["lease"]
                call("/v3/kv/put", body)
                out.append(None)
            elif op["op"] == "del":
                call("/v3/kv/deleterange", {"key": b64(op["key"])})
                out.append(None)
        print(json.dumps({"ok": True, "out": out, "t": time.monotonic()}), flush=True)
    except Exception as exc:
        print(json.dumps({"ok": False, "error": repr(exc), "t": time.monotonic()}), flush=True)
"""


class EtcdWriter:
    """Puts (with an etcd lease, as a node would) and deletes via etcd's JSON gateway.

    Runs inside the underlay namespace (etcd listens on the bridge only); one
    process for the whole run, so a put costs a round trip, not a start-up.
    """

    def __init__(self, netns: str, client_url: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", _AGENT, client_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lease_id = self.call([{"op": "grant", "ttl": LEASE_TTL}])[0]

    def call(self, ops: list[dict[str, Any]]) -> list[Any]:
        reply = self.call_timed(ops)
        return list(reply["out"])

    def call_timed(self, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """Run ops in order; the reply's "t" is the monotonic time the last one completed."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(ops) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("etcd writer exited")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"etcd write failed: {reply['error']}")
        return dict(reply)

    def put(self, leases: Iterable[BadLease], lease: bool = True) -> float:
        ops = [
            {
                "op": "put",
                "key": x.etcd_key,
                "value": x.value,
                "lease": self.lease_id if lease else 0,
            }
            for x in leases
        ]
        return float(self.call_timed(ops)["t"])

    def put_raw(self, key: str, value: str) -> None:
        self.call([{"op": "put", "key": key, "value": value}])

    def delete(self, leases: Iterable[BadLease]) -> float:
        return float(self.call_timed([{"op": "del", "key": x.etcd_key} for x in leases])["t"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                stop_pid(self.proc.pid, proc=self.proc)


# -- the daemon under test -------------------------------------------------------------


class DaemonUnderTest:
    """One node agent in the node's namespace, started and stopped by PID."""

    name = "daemon"
    has_status = False

    def __init__(self, host: Host, endpoint: str, workdir: Path) -> None:
        self.host = host
        self.endpoint = endpoint
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.subnet_file = self.dir / "subnet.env"
        self.log_path = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_ns = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        self.started_ns = time.time_ns()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host.netns, *self.argv()],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=self.env(),
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_text(self) -> str:
        if self.proc is None:
            return "not started"
        code = self.proc.poll()
        return "running" if code is None else f"exited with status {code}"

    def wait_up(self, timeout: float = 20.0) -> bool:
        """Alive and subnet.env (re)written since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            with contextlib.suppress(OSError):
                if self.subnet_file.stat().st_mtime_ns >= self.started_ns:
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, proc=self.proc)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line[:300] for line in text[-lines:])

    def status(self) -> Status | None:
        return None

    def metrics(self) -> str | None:
        return None


_FETCH = (
    "import sys, urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())\n"
)


class FlannelishDaemon(DaemonUnderTest):
    name = "flannelish"
    has_status = True

    def argv(self) -> list[str]:
        binary = str(Path(sys.executable).with_name("flannelish"))
        return [binary, "--log-format", "json", "daemon", "--etcd-endpoints", self.endpoint,
                "--subnet-file", str(self.subnet_file), "--iface", "eth0",
                "--healthz-port", str(HEALTH_PORT)]  # fmt: skip

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def _get(self, path: str) -> str | None:
        url = f"http://127.0.0.1:{HEALTH_PORT}{path}"
        result = run([sys.executable, "-c", _FETCH, url], netns=self.host.netns, check=False)
        return result.stdout if result.returncode == 0 else None

    def status(self) -> Status | None:
        text = self._get("/status")
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def metrics(self) -> str | None:
        return self._get("/metrics")


class FlanneldDaemon(DaemonUnderTest):
    name = "flanneld"

    def __init__(self, host: Host, endpoint: str, workdir: Path, binary: str) -> None:
        super().__init__(host, endpoint, workdir)
        self.binary = binary

    def argv(self) -> list[str]:
        return [self.binary, f"--etcd-endpoints={self.endpoint}", "--iface=eth0",
                f"--subnet-file={self.subnet_file}", f"--etcd-prefix={PREFIX}"]  # fmt: skip


# -- results -----------------------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    ok: bool | None  # None: not applicable to this daemon
    detail: str = ""


@dataclass
class Results:
    rows: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)  # measured values, pass or fail

    def add(self, name: str, ok: bool | None, detail: str = "") -> None:
        self.rows.append(CheckResult(name, ok, detail))

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.rows if r.ok is False]


def render_table(columns: dict[str, Results], details: bool = True) -> str:
    """Rows = checks, one column per daemon; failed cells carry their detail."""
    names: list[str] = []
    for res in columns.values():
        for row in res.rows:
            if row.name not in names:
                names.append(row.name)
    width = max([len(n) for n in names] + [5])
    heads = list(columns)
    lines = [f"{'check':<{width}} | " + " | ".join(f"{h:<10}" for h in heads)]
    lines.append("-" * len(lines[0]))
    found: dict[str, dict[str, CheckResult]] = {
        h: {r.name: r for r in res.rows} for h, res in columns.items()
    }
    for name in names:
        cells = []
        for h in heads:
            r = found[h].get(name)
            cells.append(f"{'-' if r is None else mark(r.ok):<10}")
        lines.append(f"{name:<{width}} | " + " | ".join(cells))
    totals = []
    for h, res in columns.items():
        counted = [r for r in res.rows if r.ok is not None]
        totals.append(f"{h}: {sum(1 for r in counted if r.ok)}/{len(counted)} pass")
    lines.append("-" * len(lines[0]))
    lines.append(", ".join(totals))
    for h, res in columns.items():
        for what, value in res.figures.items():
            lines.append(f"  [{h}] {what}: {value}")
    if details:
        for h, res in columns.items():
            for r in res.failed:
                lines.append(f"  [{h}] FAIL {r.name}: {r.detail}")
            for note in res.notes:
                lines.append(f"  [{h}] note: {note}")
    return "\n".join(lines)


def mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


# -- the suite ----------------------------------------------------------------------------


@dataclass
class Node:
    host: Host
    pod: str


class HostileSuite:
    """One backend, one daemon implementation; `run()` returns the check table."""

    def __init__(
        self,
        backend: str,
        factory: NetnsFactory,
        underlay: Underlay,
        etcd_netns: str,
        etcd_url: str,
        workdir: Path,
        make_daemon: Callable[[Host, str, Path], DaemonUnderTest],
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        self.backend = backend
        self.vxlan = backend == "vxlan"
        self.factory = factory
        self.underlay = underlay
        self.etcd_netns = etcd_netns
        self.etcd_url = etcd_url
        self.workdir = workdir
        self.make_daemon = make_daemon
        self.kinds = bad_kinds(backend, underlay.network)
        self.results = Results()
        self.sentinel = 200  # next sentinel third octet: 10.244.200.0/24, ...
        self.peer_lease = BadLease(
            f"{PEER_SUBNET.network_address}-24",
            lease_json(backend, "198.18.0.2", PEER_MAC),
            PEER_SUBNET,
            "198.18.0.2",
            PEER_MAC,
        )
        self.good = [self.peer_lease, good_lease(backend, 3)]
        self.base: frozenset[Entry] = frozenset()

    # -- set-up ---------------------------------------------------------------------

    def _setup(self) -> None:
        config = {"Network": str(NETWORK), "Backend": {"Type": self.backend}}
        if self.vxlan:
            config["Backend"] = {"Type": "vxlan", "VNI": 1, "Port": 8472}
        self.etcd = EtcdWriter(self.etcd_netns, self.etcd_url)
        self.etcd.put_raw(f"{PREFIX}/config", json.dumps(config))
        self.etcd.put(self.good)
        n1 = self.underlay.add_host("n1", 1)
        n2 = self.underlay.add_host("n2", 2)
        mtu = 1450 if self.vxlan else 1500
        self.n1 = Node(n1, self.factory.create("p1"))
        self.n2 = Node(n2, self.factory.create("p2"))
        # Pin the node's subnet (both daemons prefer the one in their old subnet.env).
        self.daemon = self.make_daemon(n1, self.etcd_url, self.workdir / "n1")
        self.daemon.subnet_file.write_text(f"FLANNEL_SUBNET={NODE_SUBNET.network_address + 1}/24\n")
        _pod(self.n1, NODE_SUBNET, mtu)
        _pod(self.n2, PEER_SUBNET, mtu)
        if self.vxlan:
            h = n2.run
            h("ip", "link", "add", DEV, "type", "vxlan", "id", "1", "local", str(n2.ip),
              "dev", "eth0", "dstport", "8472", "nolearning")  # fmt: skip
            h("ip", "link", "set", DEV, "address", PEER_MAC, "mtu", "1450", "up")
            h("ip", "addr", "add", f"{PEER_SUBNET.network_address}/32", "dev", DEV)
        self.daemon.start()
        if not self.daemon.wait_up(30):
            raise RuntimeError(f"{self.daemon.name} did not come up: {self.daemon.log_tail()}")
        self._program_peer()
        for lease in self.good:
            if not self._wait(functools.partial(self._programmed, lease), 10):
                raise RuntimeError(f"good peer {lease.subnet} was never programmed")
        if not self._wait(self._ping, 10, 0.2):
            raise RuntimeError("cross-node ping does not work before any bad lease")
        self.base = self._settled_snapshot()

    def _program_peer(self) -> None:
        """n2's static way back to n1 (re-read n1's VTEP MAC: a restart may change it)."""
        h = self.n2.host.run
        n1 = self.n1.host
        if not self.vxlan:
            h("ip", "route", "replace", str(NODE_SUBNET), "via", str(n1.ip), "dev", "eth0")
            return
        mac = json.loads(n1.run("ip", "-j", "link", "show", DEV).stdout)[0]["address"]
        gw = str(NODE_SUBNET.network_address)
        h("ip", "neigh", "replace", gw, "lladdr", mac, "dev", DEV, "nud", "permanent")
        for f in json.loads(h("bridge", "-j", "fdb", "show", "dev", DEV).stdout or "[]"):
            if f.get("dst") and f.get("mac") != mac:
                h("bridge", "fdb", "del", f["mac"], "dev", DEV, "dst", f["dst"], check=False)
        h("bridge", "fdb", "replace", mac, "dev", DEV, "dst", str(n1.ip), "self", "permanent")
        h("ip", "route", "replace", str(NODE_SUBNET), "via", gw, "dev", DEV, "onlink")

    # -- probes -----------------------------------------------------------------------

    def _wait(self, fn: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if fn():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def _programmed(self, lease: BadLease, state: frozenset[Entry] | None = None) -> bool:
        """The entries a correct daemon makes for a good lease are all in place."""
        assert lease.subnet is not None
        if state is None:
            state = self._route_probe(lease.subnet)
        if self.vxlan:
            gw = str(lease.subnet.network_address)
            want: set[Entry] = {
                RouteE("main", str(lease.subnet), gw, DEV, None, None, "unicast", None, True)
            }
        else:
            want = {
                RouteE(
                    "main",
                    str(lease.subnet),
                    lease.public_ip,
                    "eth0",
                    None,
                    None,
                    "unicast",
                    None,
                    False,
                )
            }
        got = {e._replace(protocol=None, scope=None) for e in state if isinstance(e, RouteE)}
        if not want <= got:
            return False
        if not self.vxlan:
            return True
        full = state if any(isinstance(e, NeighE) for e in state) else snapshot(self.n1.host)
        return (
            NeighE(gw, DEV, lease.mac) in full
            and FdbE(str(lease.mac), DEV, str(lease.public_ip)) in full
        )

    def _gone(self, lease: BadLease) -> bool:
        assert lease.subnet is not None
        state = snapshot(self.n1.host)
        return not any(belongs(e, lease) for e in state)

    def _route_probe(self, subnet: IPv4Network) -> frozenset[Entry]:
        """Just the main-table route to `subnet` (cheap enough to poll every 20 ms)."""
        rows = _json(self.n1.host, "ip", "-n", self.n1.host.netns, "-4", "-j", "route", "show",
                     "exact", str(subnet))  # fmt: skip
        return frozenset(
            RouteE(
                "main",
                _norm_dst(str(r.get("dst", ""))),
                r.get("gateway"),
                r.get("dev"),
                None,
                None,
                str(r.get("type", "unicast")),
                r.get("prefsrc"),
                "onlink" in r.get("flags", []),
            )
            for r in rows
        )

    def _ping(self) -> bool:
        result = run(["ping", "-c", "3", "-i", "0.2", "-W", "1", PEER_POD],
                     netns=self.n1.pod, check=False, timeout=15)  # fmt: skip
        return result.returncode == 0

    def _settled_snapshot(self) -> frozenset[Entry]:
        before = snapshot(self.n1.host)
        for _ in range(20):
            time.sleep(0.1)
            now = snapshot(self.n1.host)
            if now == before:
                return now
            before = now
        return before

    def _barrier(self, timeout: float = BARRIER_S) -> tuple[bool, float | None, float | None, str]:
        """Put a fresh good lease, wait for it, delete it, wait until it is gone.

        Returns (both seen, add latency, delete latency, why not): the
        latencies run from the moment etcd acknowledged the write.
        """
        lease = good_lease(self.backend, self.sentinel)
        self.sentinel += 1
        subnet = lease.subnet
        assert subnet is not None
        t_put = self.etcd.put([lease])
        if not self._wait(lambda: self._programmed(lease), timeout):
            self.etcd.delete([lease])
            why = f"good lease {lease.subnet} not programmed within {timeout:g}s"
            if not self.daemon.alive():
                why = f"daemon {self.daemon.exit_text()}"
            self._wait(lambda: self._gone(lease), 1.0)
            return False, None, None, why
        add = time.monotonic() - t_put
        t_del = self.etcd.delete([lease])
        if not self._wait(lambda: not self._route_probe(subnet), timeout):
            return False, add, None, f"good lease {lease.subnet} not removed within {timeout:g}s"
        removed = time.monotonic() - t_del
        time.sleep(SETTLE_S)
        return True, add, removed, ""

    def _harm(self, now: frozenset[Entry]) -> tuple[list[str], list[str]]:
        """(lost base routes, changed good-peer entries) compared with the baseline."""
        lost_base = [e.text() for e in sorted(self.base - now, key=str) if is_base_route(e)]
        good = []
        for lease in self.good:  # lost: anything of theirs; added: only where theirs sit
            good += [f"-{e.text()}" for e in sorted(self.base - now, key=str) if belongs(e, lease)]
            good += [f"+{e.text()}" for e in sorted(now - self.base, key=str) if same_key(e, lease)]
        return lost_base, good

    def _repair(self, why: str, force: bool = False) -> None:
        """Put the node back to the baseline (noted), so the next stage measures alone.

        Only when something is off: the daemon is stopped (its peer table may be
        stale if it was cut off from etcd), leftovers are removed and lost
        baseline entries restored, then it is started again (it re-lists) and a
        barrier shows it applies events.
        """
        now = snapshot(self.n1.host)
        if self.daemon.alive() and now == self.base and not force:
            return
        actions = []
        if not self.daemon.alive():
            actions.append(f"daemon {self.daemon.exit_text()} ({self.daemon.log_tail(2)})")
        elif force:
            actions.append("daemon not applying events after the keys were deleted")
        self.daemon.stop()
        for e in sorted(now - self.base, key=str):
            if not (isinstance(e, RouteE) and e.table == "local"):
                actions.append(f"removed leftover {e.text()}")
                _delete(self.n1.host, e)
        for e in sorted(self.base - snapshot(self.n1.host), key=str):
            if not (isinstance(e, RouteE) and e.table == "local"):
                actions.append(f"restored {e.text()}")
                _restore(self.n1.host, e)
        self.daemon.start()
        if not self.daemon.wait_up(15):
            actions.append(f"the restarted daemon did not come up: {self.daemon.log_tail(2)}")
        else:
            self._program_peer()
            ok, _, _, stuck = self._barrier(10)
            if not ok:
                actions.append(f"the restarted daemon does not apply events: {stuck}")
        lost = self.base - snapshot(self.n1.host)
        if lost:
            actions.append(f"still missing: {summary([e.text() for e in sorted(lost, key=str)])}")
        self.results.notes.append(
            f"harness repair after {why} (restarted the daemon): {summary(actions, 8)}"
        )

    # -- stages -----------------------------------------------------------------------

    def run(self) -> Results:
        try:
            self._setup()
            self._stage_isolated()
            self._stage_all_present()
            self._stage_restart()
        finally:
            self.daemon_stop()
        return self.results

    def daemon_stop(self) -> None:
        daemon = getattr(self, "daemon", None)
        if daemon is not None:
            daemon.stop()
        etcd = getattr(self, "etcd", None)
        if etcd is not None:
            etcd.close()

    def _stage_isolated(self) -> None:
        """Per group: write, barrier, one row per kind, delete, repair.

        If the group as a whole stopped the daemon (dead, or not applying
        events), each of its kinds is measured again alone, so the rows name
        the kinds that do it rather than every kind written next to them.
        """
        for group in ("semantic", "undecodable", "nested", "underlay"):
            kinds = [k for k in self.kinds if k.group == group]
            ok, rows = self._measure(kinds, group, with_update=group == "undecodable")
            if not ok and len(kinds) > 1:
                rows = {}
                for kind in kinds:
                    _, alone = self._measure([kind], f"{group}/{kind.name} alone")
                    rows[kind.name] = [f"measured alone: {d}" for d in alone[kind.name]]
            for kind in kinds:
                detail = rows[kind.name]
                self.results.add(f"{kind.name}: {kind.title}", not detail, "; ".join(detail))

    def _measure(
        self, kinds: list[Kind], label: str, with_update: bool = False
    ) -> tuple[bool, dict[str, list[str]]]:
        """Write these kinds' leases, barrier, judge each kind, delete, repair.

        Returns (the daemon applied every write and is alive, {kind: problems}).
        """
        leases = [x for k in kinds for x in k.leases]
        g4 = good_lease(self.backend, 4)
        if with_update:
            self.etcd.put([g4])
            self._wait(lambda: self._programmed(g4), 3)
        self.etcd.put(leases)
        if with_update:  # a good lease updated to an undecodable value
            t_upd = self.etcd.put([BadLease(g4.key, "{not json", g4.subnet)])
            gone = self._wait(lambda: self._gone(g4), 3)
            took = time.monotonic() - t_upd
            fast = gone and took <= 2 * FAST_S
            left = [e.text() for e in sorted(snapshot(self.n1.host), key=str) if belongs(e, g4)]
            self.results.add(
                "good lease updated to undecodable: treated as removal",
                fast,
                "" if fast else (
                    f"entries of {g4.subnet} still there 3s after the update ({summary(left)})"
                    if not gone else f"removed after {took:.2f}s"),
            )  # fmt: skip
        ok, _, _, why = self._barrier()
        now = snapshot(self.n1.host)
        alive = self.daemon.alive()
        status = self.daemon.status() if alive and self.daemon.has_status else None
        skipped = skipped_reasons(status) if status is not None else {}
        rows: dict[str, list[str]] = {}
        for kind in kinds:
            marks = footprint(self.base, now, kind.leases)
            detail = [f"kernel: {summary(marks)}"] if marks else []
            if self.daemon.has_status and kind.reported and alive:
                unlisted = [str(x.subnet) for x in kind.leases if not skipped.get(str(x.subnet))]
                if status is None:
                    detail.append("no /status")
                elif unlisted:
                    detail.append(f"not skipped with a reason in /status: {summary(unlisted)}")
            if not alive:
                detail.append(f"daemon {self.daemon.exit_text()}: {self.daemon.log_tail(2)}")
            elif not ok:
                detail.append(f"daemon stopped applying events ({why})")
            rows[kind.name] = detail
        self.etcd.delete([*leases, g4] if with_update else leases)
        after = self.daemon.alive() and self._barrier()[0]
        self._repair(label, force=not after)
        return ok and alive, rows

    def _stage_all_present(self) -> None:
        leases = [x for k in self.kinds if k.group != "nested" for x in k.leases]
        nested = [x for k in self.kinds if k.group == "nested" for x in k.leases]
        g4 = good_lease(self.backend, 4)
        self.etcd.put([g4])
        self._wait(lambda: self._programmed(g4), 3)
        self.etcd.put(leases)
        self.etcd.put([BadLease(g4.key, "{not json", g4.subnet)])
        self.etcd.put(nested)
        ok, add, removed, why = self._barrier()
        for what, took in (("programmed", add), ("removed", removed)):
            text = "not within 3 s" if took is None else f"{took * 1000:.0f} ms"
            self.results.figures[f"all bad present: good lease {what} after"] = text
        add_ok = add is not None and add <= FAST_S
        self.results.add(
            "all bad present: a new good lease is programmed within 1 s",
            add_ok,
            "" if add_ok else (why if add is None else f"took {add:.2f}s"),
        )
        del_ok = removed is not None and removed <= FAST_S
        self.results.add(
            "all bad present: a deleted good lease is removed within 1 s",
            del_ok,
            "" if del_ok else (why if removed is None else f"took {removed:.2f}s"),
        )
        processed = "" if ok else why
        if ok and not self.daemon.alive():
            processed = f"daemon {self.daemon.exit_text()}"
        self._check_node("all bad present", snapshot(self.n1.host), processed)
        self._check_reported([x for k in self.kinds if k.reported for x in k.leases] + [g4])
        # Delete every bad key: nothing of the node may be lost, nothing left behind.
        self.etcd.delete([*leases, *nested, g4])
        if not self.daemon.alive():
            self.results.notes.append(
                f"the daemon had {self.daemon.exit_text()} with the bad leases present; "
                "restarted after they were deleted, to measure what the deletion leaves"
            )
            self.daemon.start()
            self.daemon.wait_up(15)
            self._program_peer()
        self._barrier()
        now = self._settled_snapshot()
        lost_base, good = self._harm(now)
        leftovers = [f"+{e.text()}" for e in sorted(now - self.base, key=str)
                     if not (isinstance(e, RouteE) and e.table == "local")]  # fmt: skip
        lost = [f"-{e.text()}" for e in sorted(self.base - now, key=str)]
        self.results.add(
            "bad keys deleted: default + connected routes still there",
            not lost_base,
            f"lost: {summary(lost_base)}" if lost_base else "",
        )
        ping = self._wait(self._ping, 2, 0.2)
        self.results.add(
            "bad keys deleted: good peers intact, cross-node ping",
            not good and ping,
            "; ".join(([f"good peer entries changed: {summary(good)}"] if good else [])
                      + ([] if ping else ["ping pod1 -> pod2 fails"])),
        )  # fmt: skip
        self.results.add(
            "bad keys deleted: kernel back to the baseline (nothing lost, nothing left)",
            not leftovers and not lost,
            summary(lost + leftovers, 4),
        )
        self._repair("stage 'all present'")

    def _check_node(self, label: str, now: frozenset[Entry], processed: str) -> None:
        """`processed`: "" if a barrier showed the daemon applied every write, else why not.

        A check the daemon could not be measured on (dead, or not applying
        events, so it never acted on the bad leases) fails with that reason.
        """
        alive = self.daemon.alive()
        self.results.add(
            f"{label}: daemon keeps running",
            alive,
            "" if alive else f"{self.daemon.exit_text()}: {self.daemon.log_tail(2)}",
        )
        unmeasured = f"not measurable: {processed}" if processed else ""
        lost_base, good = self._harm(now)
        self.results.add(
            f"{label}: default + connected routes untouched",
            not lost_base and not unmeasured,
            "; ".join(([f"lost/replaced: {summary(lost_base)}"] if lost_base else [])
                      + ([unmeasured] if unmeasured else [])),
        )  # fmt: skip
        self.results.add(
            f"{label}: good peers' entries untouched",
            not good and not unmeasured,
            "; ".join(([summary(good, 4)] if good else []) + ([unmeasured] if unmeasured else [])),
        )
        ping = self._ping()
        self.results.add(
            f"{label}: cross-node pod ping",
            ping and not unmeasured,
            "; ".join(([] if ping else [f"ping {NODE_POD} -> {PEER_POD} fails"])
                      + ([unmeasured] if unmeasured else [])),
        )  # fmt: skip

    def _check_reported(self, leases: list[BadLease]) -> None:
        names = ("all bad present: each bad lease skipped with a reason in /status",
                 "all bad present: flannelish_peers_skipped{reason=...} in /metrics")  # fmt: skip
        if not self.daemon.has_status:
            for name in names:
                self.results.add(name, None, f"{self.daemon.name} has no such endpoint")
            return
        status = self.daemon.status() if self.daemon.alive() else None
        if status is None:
            self.results.add(names[0], False, f"no /status (daemon {self.daemon.exit_text()})")
        else:
            skipped = skipped_reasons(status)
            missing = [str(x.subnet) for x in leases if not skipped.get(str(x.subnet))]
            self.results.add(
                names[0],
                not missing,
                f"{len(missing)}/{len(leases)} not listed with a reason: {summary(missing, 4)}; "
                f"peers section: {json.dumps(status.get('peers'))[:200]}"
                if missing
                else "",
            )
        text = self.daemon.metrics() if self.daemon.alive() else None
        if text is None:
            self.results.add(names[1], False, f"no /metrics (daemon {self.daemon.exit_text()})")
            return
        samples = skipped_metric(text)
        total = sum(samples.values())
        ok = bool(samples) and all(samples) and total >= len(leases)
        self.results.add(
            names[1],
            ok,
            "" if ok else (
                f"samples {samples} sum {total:g}, want >= {len(leases)} with non-empty reasons"
                if samples else "no flannelish_peers_skipped samples with a reason label"),
        )  # fmt: skip

    def _stage_restart(self) -> None:
        leases = [x for k in self.kinds for x in k.leases]
        self.daemon.stop()
        undecodable = BadLease("10.244.4.0-24", "{not json", IPv4Network("10.244.4.0/24"))
        self.etcd.put([*leases, undecodable])
        self.daemon.start()
        # Up: subnet.env rewritten, and still running a second later.
        up = self.daemon.wait_up(15) and not self._wait(lambda: not self.daemon.alive(), 1.0)
        self.results.add(
            "restart with bad present: daemon comes up",
            up,
            "" if up else f"{self.daemon.exit_text()}: {self.daemon.log_tail(2)}",
        )
        if up:
            self._program_peer()
        ok, _, _, why = self._barrier()
        now = snapshot(self.n1.host)
        _, good = self._harm(now)
        ping = up and self._wait(self._ping, 2, 0.2)
        problems = []
        if not ok:
            problems.append(f"new good lease: {why}")
        if good:
            problems.append(f"good peer entries: {summary(good)}")
        if not ping:
            problems.append("cross-node ping fails")
        self.results.add(
            "restart with bad present: serves good peers (old and new)",
            not problems,
            "; ".join(problems),
        )
        lost_base, _ = self._harm(now)
        marks = footprint(self.base, now, leases)
        bad = [f"lost {x}" for x in lost_base] + marks
        detail = summary(bad, 4)
        if not self.daemon.alive():
            detail = (detail + "; " if detail else "") + f"daemon {self.daemon.exit_text()}"
        self.results.add(
            "restart with bad present: no bad lease programmed, base routes kept",
            not bad and self.daemon.alive(),
            detail,
        )
        self.etcd.delete([*leases, undecodable])


def skipped_reasons(status: Status) -> dict[str, str]:
    """/status peers.skipped as {subnet CIDR: reason}, whatever shape it has.

    Accepts {"10.244.7.0/24": "reason"}, {"10.244.7.0-24": {"reason": ...}},
    [{"subnet"|"key": ..., "reason": ...}]; keys may be full etcd keys.
    """
    peers = status.get("peers") or {}
    raw = peers.get("skipped") if isinstance(peers, dict) else None
    items: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        items = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict):
                items.append((str(item.get("subnet") or item.get("key") or ""), item))
    out: dict[str, str] = {}
    for key, value in items:
        reason = value.get("reason") if isinstance(value, dict) else value
        out[_cidr(key)] = str(reason or "")
    return out


def _cidr(key: str) -> str:
    tail = key.rsplit("/subnets/", 1)[-1]
    if "/" not in tail and "-" in tail:
        addr, _, plen = tail.rpartition("-")
        tail = f"{addr}/{plen}"
    try:
        return str(ip_network(tail, strict=False))
    except ValueError:
        return key


def skipped_metric(text: str) -> dict[str, float]:
    """{reason: value} of flannelish_peers_skipped (empty if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "flannelish_peers_skipped":
            continue
        for sample in family.samples:
            if sample.name == "flannelish_peers_skipped":
                reason = sample.labels.get("reason", "")
                out[reason] = out.get(reason, 0.0) + float(sample.value)
    return out


# -- kernel helpers --------------------------------------------------------------------


def _pod(node: Node, subnet: IPv4Network, mtu: int) -> None:
    """cni0 with the subnet's .1 and one pod (.2) behind a veth."""
    h = node.host.run
    h("sysctl", "-qw", "net.ipv4.ip_forward=1")
    h("ip", "link", "add", "cni0", "type", "bridge")
    h("ip", "addr", "add", f"{subnet.network_address + 1}/{subnet.prefixlen}", "dev", "cni0")
    h("ip", "link", "set", "cni0", "mtu", str(mtu), "up")
    h("ip", "link", "add", "veth0", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
      "mtu", str(mtu), "netns", node.pod)  # fmt: skip
    h("ip", "link", "set", "veth0", "master", "cni0", "up")
    p = ["ip", "-n", node.pod]
    run([*p, "addr", "add", f"{subnet.network_address + 2}/{subnet.prefixlen}", "dev", "eth0"])
    run([*p, "link", "set", "eth0", "up"])
    run([*p, "route", "add", "default", "via", str(subnet.network_address + 1)])


def _route_argv(e: RouteE) -> list[str]:
    argv = [] if e.type == "unicast" else [e.type]
    argv.append("default" if e.dst == "0.0.0.0/0" else e.dst)
    argv += ["table", e.table]
    if e.gateway:
        argv += ["via", e.gateway]
    if e.dev:
        argv += ["dev", e.dev]
    return argv


def _delete(host: Host, e: Entry) -> None:
    if isinstance(e, RouteE):
        host.run("ip", "route", "del", *_route_argv(e), check=False)
    elif isinstance(e, NeighE):
        host.run("ip", "neigh", "del", e.dst, "dev", e.dev, check=False)
    else:
        host.run("bridge", "fdb", "del", e.mac, "dev", e.dev, "dst", e.dst, check=False)


def _restore(host: Host, e: Entry) -> None:
    if isinstance(e, RouteE):
        argv = _route_argv(e)
        if e.protocol:
            argv += ["proto", e.protocol]
        if e.scope:
            argv += ["scope", e.scope]
        if e.prefsrc:
            argv += ["src", e.prefsrc]
        if e.onlink:
            argv.append("onlink")
        host.run("ip", "route", "replace", *argv, check=False)
    elif isinstance(e, NeighE):
        host.run("ip", "neigh", "replace", e.dst, "lladdr", str(e.lladdr), "dev", e.dev,
                 "nud", "permanent", check=False)  # fmt: skip
    else:
        host.run("bridge", "fdb", "replace", e.mac, "dev", e.dev, "dst", e.dst, "self",
                 "permanent", check=False)  # fmt: skip
