"""Fleet simulator: many simulated nodes, real leases, one real etcd, real daemons.

Every simulated node is the product's own code: a SubnetManager on an
EtcdRegistry (nodes share a few gRPC connections, as many nodes per process as
asked; each holds its own etcd lease), a LeaseKeeper for renewals, and
``watch_leases`` for the watchers.  etcd runs on an isolated underlay
(bench/convergence.py's BenchCluster) so real daemons can be measured next to
the fleet.  Phases, in this order:

1. fan-out: W watchers (``watch_leases``, each its own etcd client and watch)
   in a few processes; lease writes, each seen by all W: put -> seen by the
   last watcher, and every delivery.  Baseline: W raw pyetcd prefix watches
   (bench/leases.py's propagation, same run).  Goal: p99 < 100 ms.
2. lease storm: N nodes acquire at once (one thread each, behind a barrier):
   total time, per-node acquire time, conflict retries (lost create-only
   races), distinct subnets, nodes that gave up.  Baseline: N raw puts at once.
3. renewals: K more nodes with a short TTL run the real LeaseKeeper for a few
   renewal periods; etcd's raft proposals (``/metrics``) per renewal give the
   etcd writes/s of N nodes at the default TTL (24 h, renewed 1 h early).
4. daemons: flanneld (with ``FLANNELD_BIN``) then flannelish cold-start over
   the N leases the fleet holds (start -> subnet.env -> all N routes, seen on
   a multicast socket), against iproute2 ``-batch`` programming the same 3N
   entries (median of 3 fresh namespaces); RSS growth after subnet.env
   ((RSS after the idle period - RSS at subnet.env) / N: every owner's first
   pass is done by then; it holds the fixed cost of starting the loops and not
   the leases, so memory per peer is judged on bench/report.py's slope between
   the population runs), peak RSS, idle CPU per hour.
5. release: all N nodes release at once; time until flannelish's kernel has
   dropped every one of their routes.

Run as root: ``FLANNELD_BIN=/usr/local/bin/flanneld .venv/bin/python
bench/fleet.py [--nodes 5000] [--watchers 1000] [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from benchjson import pct

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_TTL_S = 24 * 3600  # flannelish.subnet.manager.DEFAULT_LEASE_TTL (Flannel's)
DEFAULT_MARGIN_S = 3600  # the daemon's --subnet-lease-renew-margin (60 min)
STORM_TIMEOUT_S = 900  # a node still waiting for etcd after this gives up (counted as failed)


# -- pure aggregation (unit-tested in tests/bench/test_fleet.py) -----------------------


@dataclass(frozen=True)
class NodeResult:
    """One simulated node's acquisition."""

    index: int
    subnet: str | None  # None: it gave up (the error says why)
    seconds: float
    lost_races: int
    error: str | None = None


def storm_summary(results: list[NodeResult], total_s: float) -> dict[str, Any]:
    """Distinct subnets, duplicates, failures, retries and acquire times of one storm."""
    holders: dict[str, list[int]] = {}
    for r in results:
        if r.subnet is not None:
            holders.setdefault(r.subnet, []).append(r.index)
    duplicates = {s: idx for s, idx in holders.items() if len(idx) > 1}
    failed = [r for r in results if r.subnet is None]
    retries = [r.lost_races for r in results]
    times = [r.seconds for r in results if r.subnet is not None]
    histogram: dict[int, int] = {}
    for n in retries:
        histogram[n] = histogram.get(n, 0) + 1
    return {
        "nodes": len(results),
        "total_s": total_s,
        "distinct": len(holders),
        "duplicates": duplicates,
        "failed": len(failed),
        "errors": sorted({r.error or "" for r in failed})[:5],
        "retries_total": sum(retries),
        "retries_max": max(retries, default=0),
        "retries_per_node": sum(retries) / len(results) if results else 0.0,
        "retry_histogram": dict(sorted(histogram.items())),
        "acquire_p50_s": pct(times, 50),
        "acquire_p99_s": pct(times, 99),
        "acquire_max_s": max(times, default=0.0),
        "acquire_s": sorted(times),
    }


def fanout_summary(
    times: dict[tuple[int, str], float], started: dict[str, float], watchers: int
) -> dict[str, Any]:
    """Per write: put -> seen by the last watcher; per delivery: put -> seen (ms)."""
    last: dict[str, float] = {}
    deliveries: list[float] = []
    for (_, key), at in times.items():
        if key not in started:
            continue
        deliveries.append((at - started[key]) * 1000)
        last[key] = max(last.get(key, at), at)
    seen_by = {k: 0 for k in started}
    for _, key in times:
        if key in seen_by:
            seen_by[key] += 1
    # A write some watcher never saw has no "seen by all" time: it counts as missing.
    all_seen = [(last[k] - started[k]) * 1000 for k in started if seen_by[k] >= watchers]
    return {
        "watchers": watchers,
        "writes": len(started),
        "missing": sum(watchers - n for n in seen_by.values()),
        "all_seen_ms": sorted(all_seen),
        "delivery_ms": deliveries,
    }


def renewal_writes_per_s(nodes: int, writes_per_renewal: float, ttl_s: float, margin_s: float):  # type: ignore[no-untyped-def]
    """etcd writes/s of `nodes` renewing every ttl - min(margin, ttl / 2) seconds."""
    period = ttl_s - min(margin_s, ttl_s / 2)
    return nodes * writes_per_renewal / period


def metric_total(text: str, name: str) -> float:
    """Sum of one metric's samples in Prometheus' text format (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head == name or head.startswith(name + "{"):
            try:
                total += float(value)
            except ValueError:
                continue
    return total


def per_peer_bytes(rss_before_kb: int, rss_after_kb: int, peers: int) -> float:
    return max(0, rss_after_kb - rss_before_kb) * 1024 / peers if peers else 0.0


# -- simulated nodes (run inside the writer namespace) ---------------------------------


def node_attrs(i: int) -> Any:
    """Simulated node i advertises what convergence.py's population does (PublicIP, VTEP MAC)."""
    from convergence import pop_ip, pop_mac

    from flannelish.subnet.lease import LeaseAttrs

    return LeaseAttrs(IPv4Address(pop_ip(i)), "vxlan", {"VNI": 1, "VtepMAC": pop_mac(i)})


class Fleet:
    """Simulated nodes sharing `connections` etcd clients (one SubnetManager each)."""

    def __init__(self, endpoint: str, connections: int) -> None:
        from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore

        self.options = EtcdOptions.from_flags(endpoints=endpoint)
        self.stores = [EtcdStore(self.options, timeout=60) for _ in range(connections)]
        self.endpoint = endpoint
        self.managers: dict[int, Any] = {}
        self.leases: dict[int, Any] = {}

    def manager(self, i: int, ttl: int = DEFAULT_TTL_S) -> Any:
        from flannelish.subnet.manager import SubnetManager
        from flannelish.subnet.registry import EtcdRegistry

        if i not in self.managers:
            store = self.stores[i % len(self.stores)]
            self.managers[i] = SubnetManager(EtcdRegistry(self.options, store=store), ttl)
        return self.managers[i]

    def at_once(self, indexes: list[int], work: Any) -> tuple[float, list[Any]]:
        """Run work(i) for every index in its own thread, all released together."""
        barrier = threading.Barrier(len(indexes) + 1)
        out: list[Any] = [None] * len(indexes)

        def one(slot: int, i: int) -> None:
            barrier.wait()
            out[slot] = work(i)

        threading.stack_size(256 * 1024)
        threads = [threading.Thread(target=one, args=x, daemon=True) for x in enumerate(indexes)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - t0, out

    def storm(self, indexes: list[int], ttl: int = DEFAULT_TTL_S) -> tuple[float, list[NodeResult]]:
        """Every node in `indexes` acquires at once, as the daemon does (etcd failures are
        waited out, lost races retried): (seconds, one result per node)."""
        managers = {i: self.manager(i, ttl) for i in indexes}
        stop = threading.Event()
        timer = threading.Timer(STORM_TIMEOUT_S, stop.set)
        timer.start()

        def acquire(i: int) -> NodeResult:
            t0 = time.perf_counter()
            try:
                lease = managers[i].acquire(node_attrs(i), wait=True, stop=stop)
            except Exception as exc:  # a node that gives up is a result, not a crash
                took = time.perf_counter() - t0
                return NodeResult(i, None, took, managers[i].lost_races, str(exc)[:200])
            self.leases[i] = lease
            took = time.perf_counter() - t0
            return NodeResult(i, str(lease.subnet), took, managers[i].lost_races)

        try:
            return self.at_once(indexes, acquire)
        finally:
            timer.cancel()

    def raw_puts(self, indexes: list[int]) -> float:
        """Baseline: a plain put per node at once (one key each), on the same connections."""
        from convergence import lease_value

        def put(i: int) -> None:
            self.stores[i % len(self.stores)].put(f"/bench/fleet-raw/{i}", lease_value(i).encode())

        total, _ = self.at_once(indexes, put)
        return total

    def release(self, indexes: list[int]) -> tuple[float, int]:
        """Every node in `indexes` releases at once: (seconds, releases etcd failed)."""

        def release(i: int) -> bool:
            try:
                self.managers[i].release(self.leases.pop(i))
            except Exception:  # e.g. a timeout under the storm: the key expires on its own
                return False
            return True

        total, done = self.at_once([i for i in indexes if i in self.leases], release)
        return total, done.count(False)

    def renewals(self, first: int, count: int, ttl: int, seconds: float) -> dict[str, Any]:
        """`count` nodes with `ttl` run LeaseKeepers for `seconds`: renewals and etcd writes."""
        from flannelish.subnet.keeper import LeaseKeeper

        indexes = list(range(first, first + count))
        _, results = self.storm(indexes, ttl)
        renewed = [0]
        lock = threading.Lock()

        def on_change(_lease: Any) -> None:
            with lock:
                renewed[0] += 1

        keepers = [
            LeaseKeeper(self.managers[i], self.leases[i], DEFAULT_MARGIN_S, on_change)
            for i in indexes
            if i in self.leases
        ]
        before = etcd_writes(self.endpoint)
        for k in keepers:
            k.start()
        time.sleep(seconds)
        for k in keepers:
            k._stop_event.set()  # all at once; joined below
        for k in keepers:
            k.join(10)
        after = etcd_writes(self.endpoint)
        for i, k in zip(indexes, keepers, strict=False):
            self.leases[i] = self.managers[i].own_lease(k.lease.key) or k.lease
        self.release(indexes)
        writes = after - before
        return {
            "nodes": len(keepers),
            "ttl_s": ttl,
            "seconds": seconds,
            "renewals": renewed[0],
            "failed_acquires": sum(1 for r in results if r.subnet is None),
            "etcd_writes": writes,
            "writes_per_renewal": writes / renewed[0] if renewed[0] else 0.0,
        }

    def close(self) -> None:
        for store in self.stores:
            store.close()


def etcd_writes(endpoint: str) -> float:
    """Raft proposals etcd committed so far: every put, txn, lease grant and revoke."""
    import urllib.request

    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return metric_total(text, "etcd_server_proposals_committed_total")


# -- watch fan-out ------------------------------------------------------------------
# 1000 watchers as 1000 Python clients would measure this machine's 2 cores, not etcd
# (bench/leases.py's raw pyetcd watchers need seconds per write at 1000 here).  So
# the fan-out is W - k light watchers -- real etcd watch streams, each its own, on
# asyncio gRPC, a few connections per process -- plus k of the product's
# watch_leases (each its own etcd client), whose delivery is measured under that load.


def _aio_worker(url, first, count, channels, prefix, expected, ready, go, out):  # type: ignore[no-untyped-def]
    """`count` etcd watch streams on `prefix` in one asyncio loop; arrival times out."""
    import asyncio

    import grpc
    from pyetcd import etcdrpc, utils

    target = url.split("//")[-1]

    async def main() -> dict[tuple[int, str], float]:
        chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
        times: dict[tuple[int, str], float] = {}
        created = asyncio.Semaphore(0)
        done = asyncio.Event()
        hold = asyncio.Event()  # keeps every stream's send side open

        async def requests():  # type: ignore[no-untyped-def]
            yield etcdrpc.WatchRequest(
                create_request=etcdrpc.WatchCreateRequest(
                    key=prefix.encode(), range_end=utils.prefix_range_end(prefix.encode())
                )
            )
            await hold.wait()

        async def one(n: int) -> None:
            call = etcdrpc.WatchStub(chans[n % channels]).Watch(requests())
            async for resp in call:
                now = time.monotonic()
                if resp.created:
                    created.release()
                for ev in resp.events:
                    times.setdefault((n, ev.kv.key.decode()), now)
                if len(times) >= count * expected:
                    done.set()

        tasks = [asyncio.ensure_future(one(n)) for n in range(first, first + count)]
        for _ in range(count):
            await asyncio.wait_for(created.acquire(), 120)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ready.release)
        await loop.run_in_executor(None, go.wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 30)
        result = dict(times)
        hold.set()
        for t in tasks:
            t.cancel()
        for c in chans:
            await c.close()
        return result

    out.put(asyncio.run(main()))


def fanout_round(
    url: str, light: int, product: int, keys: list[str], gap: float, procs: int
) -> tuple[dict[tuple[int, str], float], dict[str, float]]:
    """`light` asyncio watchers in `procs` processes and `product` watch_leases in one more;
    the keys put one at a time `gap` apart.  Watchers `light` ... are the product's."""
    import multiprocessing

    import leases
    from convergence import KEYS, _client

    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    jobs, first = [], 0
    for p in range(procs):
        count = light // procs + (1 if p < light % procs else 0)
        if count:
            args = (url, first, count, 8, KEYS.subnets, len(keys), ready, go, out)
            jobs.append(ctx.Process(target=_aio_worker, args=args))
            first += count
    if product:
        args = ("ours", url, light, product, len(keys), ready, go, out)  # type: ignore[assignment]
        jobs.append(ctx.Process(target=leases._watch_worker, args=args))
    for job in jobs:
        job.start()
    try:
        for _ in jobs:
            if not ready.acquire(timeout=180):
                raise RuntimeError("fan-out watchers did not start")
        go.set()
        client = _client(url)
        started = {}
        for i, key in enumerate(keys):
            started[key] = time.monotonic()
            client.put(key, node_attrs(50000 + i).to_json())
            time.sleep(gap)
        times: dict[tuple[int, str], float] = {}
        for _ in jobs:
            times.update(out.get(timeout=90))
        for key in keys:  # the fan-out's leases must not reach the daemons as peers
            client.delete(key)
        return times, started
    finally:
        for job in jobs:
            job.join(timeout=30)
            if job.is_alive():
                job.kill()


def fanout(endpoint: str, watchers: int, writes: int, procs: int) -> dict[str, Any]:
    """Baseline (one light and one product watcher, no fan-out), then the fan-out."""
    from convergence import KEYS

    product = min(10, watchers)
    out: dict[str, Any] = {}
    for name, light, ours, base in (
        ("alone", 1, 1, 10 * writes),
        ("fanout", watchers - product, product, 0),
    ):
        nets = [
            IPv4Network((int(IPv4Address("10.250.0.0")) + 64 * (base + i), 26))
            for i in range(writes)
        ]
        keys = [KEYS.subnet(n) for n in nets]
        times, started = fanout_round(endpoint, light, ours, keys, 0.05, procs)
        out[name] = fanout_summary(times, started, light + ours)
        mine = {k: v for k, v in times.items() if k[0] >= light}
        out[name]["product_ms"] = fanout_summary(mine, started, ours)["delivery_ms"]
        out[name]["light"], out[name]["product"] = light, ours
    return out


def share_decoding() -> None:
    """The simulated nodes of one process decode each lease value and key once, together.

    Decoding is a pure function of the bytes etcd returns (LeaseAttrs is frozen),
    so sharing it changes no decision -- every node still lists, picks and writes
    through its own SubnetManager.  It only takes away the CPU 5000 real nodes
    would spend on their own machines: listing 5000 leases costs ~0.25 s of CPU,
    and 5000 nodes re-listing on 2 shared cores would measure the simulator
    (a storm of 5000 took over 15 min without this), not etcd or the protocol.
    """
    import functools

    from flannelish.subnet import keys, lease

    decode = lease.LeaseAttrs.from_json.__func__  # type: ignore[attr-defined]
    memo = functools.lru_cache(maxsize=1 << 16)(lambda raw, max_bytes: decode(
        lease.LeaseAttrs, raw, max_bytes))  # fmt: skip

    def from_json(cls: Any, raw: bytes | str, max_bytes: int = lease.MAX_VALUE_BYTES) -> Any:
        return memo(raw, max_bytes)

    lease.LeaseAttrs.from_json = classmethod(from_json)  # type: ignore[method-assign, assignment]
    keys.parse_subnet_key = functools.lru_cache(maxsize=1 << 16)(keys.parse_subnet_key)  # type: ignore[assignment]


def fleet_child(endpoint: str, spec: dict[str, Any]) -> int:
    """One of the fleet's processes inside the writer namespace: nodes `part`, `part` +
    `parts`, ... < `nodes`.  Phases run when the parent writes their name on stdin;
    each answers one JSON line on stdout.  Part 0 also runs the fan-out and renewals."""

    def say(phase: str, data: Any) -> None:
        print(json.dumps({"phase": phase, "data": data}), flush=True)

    n, part = spec["nodes"], spec["part"]
    mine = list(range(part, n, spec["parts"]))
    if spec.get("memo", True):
        share_decoding()
    fleet = Fleet(endpoint, spec["connections"])
    try:
        for name in (i.strip() for i in sys.stdin):
            if name == "fanout":
                say(name, fanout(endpoint, spec["watchers"], spec["writes"], spec["workers"]))
            elif name == "raw":
                start = time.monotonic()
                took = fleet.raw_puts(mine)
                say(name, {"start": start, "end": start + took})
            elif name == "storm":
                start = time.monotonic()
                took, results = fleet.storm(mine)
                say(name, {"start": start, "end": start + took,
                           "results": [asdict(r) for r in results]})  # fmt: skip
            elif name == "renewals":
                say(name, fleet.renewals(n, spec["renewers"], spec["renew_ttl"],
                                         spec["renew_seconds"]))  # fmt: skip
            elif name == "release":
                start = time.monotonic()
                took, failed = fleet.release(mine)
                say(name, {"start": start, "end": start + took, "failed": failed})
            elif name == "quit":
                break
    finally:
        fleet.close()
    return 0


# -- the parent: etcd, the fleet's processes, the daemons ------------------------------


class Child:
    """One of the fleet's processes: phase names in, JSON lines out."""

    def __init__(self, netns: str, endpoint: str, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, __file__, "--inside", endpoint,
             "--spec", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def read(self, phase: str) -> Any:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                msg = json.loads(line)
                if msg["phase"] == phase:
                    return msg["data"]
        raise RuntimeError(f"a fleet process ended before phase {phase} (rc {self.proc.wait()})")

    def send(self, phase: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(phase + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        from flannelish.testing.proc import stop_pid

        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_pid(self.proc.pid, proc=self.proc)


def all_at_once(children: list[Child], phase: str) -> list[Any]:
    """Send `phase` to every fleet process, then collect their answers."""
    for child in children:
        child.send(phase)
    return [child.read(phase) for child in children]


def span(parts: list[dict[str, Any]]) -> float:
    """First start to last end across processes (time.monotonic is system-wide)."""
    return max(p["end"] for p in parts) - min(p["start"] for p in parts)


def wait_routes_gone(routes: Any, subnets: set[IPv4Network], since: float, timeout: float) -> float:
    """Seconds from `since` until the kernel announced every route in `subnets` deleted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = [routes.seen.get(("del", s)) for s in subnets]
        if all(gone):
            return max(x for x in gone if x) - since
        time.sleep(0.05)
    left = sum(1 for s in subnets if ("del", s) not in routes.seen)
    raise RuntimeError(f"{left} routes still present {timeout} s after the release")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import convergence as conv

    n = args.nodes
    flanneld = os.environ.get("FLANNELD_BIN")
    notes = []
    if not flanneld or not os.access(flanneld, os.X_OK):
        notes.append("flanneld skipped: FLANNELD_BIN is not set (or not executable)")
        flanneld = None
    spec = {
        "nodes": n, "connections": args.connections, "watchers": args.watchers,
        "writes": args.writes, "workers": args.workers, "renewers": args.renewers,
        "renew_ttl": args.renew_ttl, "renew_seconds": args.renew_seconds,
        "parts": args.procs, "memo": not args.no_shared_decoding,
    }  # fmt: skip
    res: dict[str, Any] = {"spec": spec, "notes": notes, "load": [os.getloadavg()[0]]}
    started = time.monotonic()
    with conv.BenchCluster(underlay_network=conv.POP_UNDERLAY) as cluster:
        cluster.etcd.etcdctl("put", conv.KEYS.config, conv.POP_CONFIG)
        writer = cluster.add_host("wr")
        children = [
            Child(writer.netns, cluster.endpoint, {**spec, "part": p}) for p in range(args.procs)
        ]
        try:
            res["fanout"] = all_at_once(children[:1], "fanout")[0]
            print_fanout(res["fanout"])
            raw = span(all_at_once(children, "raw"))
            parts = all_at_once(children, "storm")
            results = [NodeResult(**r) for p in parts for r in p["results"]]
            res["storm"] = {**storm_summary(results, span(parts)), "raw_puts_s": raw}
            print_storm(res["storm"])
            res["renewals"] = all_at_once(children[:1], "renewals")[0]
            print_renewals(res["renewals"], n)
            held = conv.subnets_in_etcd(cluster)
            res["storm"]["in_etcd"] = len(held)
            runs = sorted(conv.iproute_batch(cluster, len(held), f"base{i}") for i in range(3))
            res["iproute2_s"], res["iproute2_runs"] = runs[1], runs
            daemons: dict[str, dict[str, Any]] = {}
            if flanneld:
                daemons["flanneld"] = conv.cold_start(
                    cluster, "fd", n, lambda h: cluster.start_flanneld(h, flanneld), expect=held
                )
                time.sleep(1)
            daemons["flannelish"] = conv.cold_start(
                cluster, "fl", n,
                lambda h: cluster.start_daemon(h, "--log-format", "json", wait=False),
                expect=held,
            )  # fmt: skip
            time.sleep(2)  # the first full pass is done, the watch idles
            before = {k: conv.cpu_seconds(v["pid"]) for k, v in daemons.items()}
            time.sleep(args.idle)
            for k, d in daemons.items():
                d["idle_cpu_s_per_h"] = (conv.cpu_seconds(d["pid"]) - before[k]) / args.idle * 3600
                d.update(conv.memory_kb(d["pid"]))
                d["per_peer_b"] = per_peer_bytes(d["rss_env_kb"], d["VmRSS"], len(held))
            released_at = time.time()
            parts = all_at_once(children, "release")
            res["release"] = {"seconds": span(parts), "failed": sum(p["failed"] for p in parts)}
            fl = daemons["flannelish"]
            res["release"]["routes_gone_s"] = wait_routes_gone(
                fl["routes"], held, released_at, timeout=120
            )
            for d in daemons.values():
                for key in ("host", "routes", "pid"):
                    d.pop(key, None)
            res["daemons"] = daemons
        finally:
            for child in children:
                child.close()
    res["load"].append(os.getloadavg()[0])
    res["seconds"] = round(time.monotonic() - started, 1)
    return res


# -- output ------------------------------------------------------------------------------


def print_fanout(f: dict[str, Any]) -> None:
    fan, alone = f["fanout"], f["alone"]
    print(
        f"fan-out: {fan['watchers']} etcd watchers ({fan['light']} light asyncio streams + "
        f"{fan['product']} watch_leases), {fan['writes']} lease writes; "
        f"missing deliveries {fan['missing']}"
    )
    rows = (
        ("put -> seen by all watchers", fan["all_seen_ms"], alone["all_seen_ms"]),
        ("put -> seen by watch_leases", fan["product_ms"], alone["product_ms"]),
    )
    for label, a, b in rows:
        print(
            f"  {label:30} p50 {pct(a, 50):7.1f} p99 {pct(a, 99):7.1f} ms   "
            f"one watcher, no fan-out: p50 {pct(b, 50):6.1f} p99 {pct(b, 99):6.1f} ms"
        )


def print_storm(s: dict[str, Any]) -> None:
    print(
        f"lease storm: {s['nodes']} nodes at once: {s['total_s']:.1f} s "
        f"({s['raw_puts_s']:.1f} s for as many raw puts at once); {s['distinct']} distinct "
        f"subnets, {len(s['duplicates'])} duplicates, {s['failed']} gave up; "
        f"lost races {s['retries_total']} "
        f"({s['retries_per_node']:.2f}/node, max {s['retries_max']}); acquire p50 "
        f"{s['acquire_p50_s']:.2f} s p99 {s['acquire_p99_s']:.2f} s"
    )
    if s["errors"]:
        print(f"  errors: {s['errors']}")


def print_renewals(r: dict[str, Any], n: int) -> None:
    rate = renewal_writes_per_s(n, r["writes_per_renewal"], DEFAULT_TTL_S, DEFAULT_MARGIN_S)
    print(
        f"renewals: {r['nodes']} LeaseKeepers, TTL {r['ttl_s']} s, {r['seconds']:.0f} s: "
        f"{r['renewals']} renewals, {r['etcd_writes']:.0f} etcd writes "
        f"({r['writes_per_renewal']:.2f}/renewal) -> {n} nodes at TTL 24 h: {rate:.3f} writes/s"
    )


def report(res: dict[str, Any]) -> None:
    n, daemons = res["spec"]["nodes"], res["daemons"]
    names = [x for x in ("flannelish", "flanneld") if x in daemons]
    base = res["iproute2_s"]
    print(f"daemons over the fleet's {res['storm']['in_etcd']} leases (load {res['load']}):")
    print(f"{'':42}" + "".join(f"{x:>14}" for x in names))

    def row(label: str, fmt: str, key: str, scale: float = 1.0) -> None:
        print(f"{label:42}" + "".join(f"{daemons[x][key] * scale:>14{fmt}}" for x in names))

    row("cold: start -> subnet.env (s)", ".3f", "env_s")
    row("cold: start -> all routes (s)", ".3f", "routes_s")
    print(f"{'  baseline iproute2 -batch (s)':42}{base:>14.3f}   runs {res['iproute2_runs']}")
    print(f"{'  ratio start->routes / iproute2':42}" + "".join(
        f"{daemons[x]['routes_s'] / base:>13.2f}x" for x in names))  # fmt: skip
    row("peak RSS, VmHWM (MB)", ".1f", "VmHWM", 1 / 1024)
    row("RSS growth after subnet.env / peers (B)", ".0f", "per_peer_b")
    print("  (RSS after the idle period - RSS at subnet.env) / peers: with the fixed cost")
    print("  of starting the loops, and without the leases (listed before subnet.env);")
    print("  flanneld lists every lease before writing subnet.env.  Memory per peer is")
    print("  the RSS slope between `convergence.py --population` runs, see the report)")
    row("idle CPU (CPU-s per hour)", ".1f", "idle_cpu_s_per_h")
    rel = res["release"]
    print(
        f"release: {n} nodes at once {rel['seconds']:.1f} s ({rel.get('failed', 0)} failed); "
        f"flannelish's kernel had dropped all their routes {rel['routes_gone_s']:.1f} s "
        "after the first release"
    )


def write_json(path: str | None, res: dict[str, Any]) -> None:
    from benchjson import Results

    spec = res["spec"]
    out = Results("fleet", path, nodes=spec["nodes"], watchers=spec["watchers"])
    out.doc["host"]["loadavg_start"] = [res["load"][0]]
    out._t0 -= res.get("seconds", 0.0)  # the run took place before this document
    for note in res["notes"]:
        out.note(note)
    f = res["fanout"]
    base_name = "one watcher, no fan-out"
    for name, key in (("all_seen", "all_seen_ms"), ("product", "product_ms")):
        fan, alone = f["fanout"][key], f["alone"][key]
        out.samples(f"fleet.fanout.{name}", fan, "ms")
        out.samples(f"fleet.fanout.{name}.baseline", alone, "ms")
        for q in (50, 99):
            goal = "< 100 ms" if name == "all_seen" and q == 99 else None
            out.figure(f"fleet.fanout.{name}.p{q}", pct(fan, q), "ms", pct(alone, q),
                       base_name, goal)  # fmt: skip
    out.figure("fleet.fanout.missing", f["fanout"]["missing"], "deliveries", goal="<= 0 deliveries")
    s = res["storm"]
    out.figure("fleet.storm.total_s", s["total_s"], "s", s["raw_puts_s"], "raw puts at once")
    out.figure("fleet.storm.distinct", s["distinct"], "subnets", s["nodes"], "nodes", ">= 1.0x")
    out.figure("fleet.storm.duplicates", len(s["duplicates"]), "subnets", goal="<= 0 subnets")
    out.figure("fleet.storm.failed", s["failed"], "nodes", goal="<= 0 nodes")
    out.figure("fleet.storm.retries_total", s["retries_total"], "lost races")
    out.figure("fleet.storm.retries_max", s["retries_max"], "lost races")
    out.samples("fleet.storm.acquire", s["acquire_s"], "s")
    out.figure("fleet.storm.acquire_p50", s["acquire_p50_s"], "s")
    out.figure("fleet.storm.acquire_p99", s["acquire_p99_s"], "s")
    r = res["renewals"]
    rate = renewal_writes_per_s(
        spec["nodes"], r["writes_per_renewal"], DEFAULT_TTL_S, DEFAULT_MARGIN_S
    )
    out.figure("fleet.steady.writes_per_renewal", r["writes_per_renewal"], "writes")
    out.figure("fleet.steady.renewal_writes_per_s", rate, "writes/s")
    base = res["iproute2_s"]
    out.figure("fleet.cold.iproute2_s", base, "s")
    fd = res["daemons"].get("flanneld")
    for who, d in res["daemons"].items():
        pre = "fleet" if who == "flannelish" else f"fleet.{who}"
        mine = who == "flannelish"
        # The cold-sync goal is set at 5000 peers (see report.py's population).
        out.figure(f"{pre}.cold.routes_s", d["routes_s"], "s", base, "iproute2 -batch",
                   "<= 2.0x" if mine and spec["nodes"] >= 5000 else None)  # fmt: skip
        if mine and fd:
            out.figure("fleet.cold.routes_vs_flanneld", d["routes_s"], "s", fd["routes_s"],
                       "flanneld", "< 1.0x")  # fmt: skip
        out.figure(f"{pre}.cold.env_s", d["env_s"], "s")
        hwm_goal = "< 60 MB" if mine and spec["nodes"] >= 5000 else None
        out.figure(f"{pre}.hwm_mb", d["VmHWM"] / 1024, "MB", goal=hwm_goal)
        if mine:  # informational, see report(): the goal is judged on the population slope
            out.figure(f"{pre}.per_peer_b", d["per_peer_b"], "B")
        out.figure(f"{pre}.idle_cpu_s_per_h", d["idle_cpu_s_per_h"], "CPU-s/h")
    out.figure("fleet.release.seconds", res["release"]["seconds"], "s")
    out.figure("fleet.release.failed", res["release"].get("failed", 0), "nodes")
    out.figure("fleet.release.routes_gone_s", res["release"]["routes_gone_s"], "s")
    out.write()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000, help="simulated nodes in the storm")
    parser.add_argument("--watchers", type=int, default=1000, help="fan-out watchers")
    parser.add_argument("--writes", type=int, default=20, help="fan-out lease writes")
    parser.add_argument("--workers", type=int, default=2, help="fan-out watcher processes")
    parser.add_argument("--procs", type=int, default=8, help="processes the nodes run in")
    parser.add_argument(
        "--no-shared-decoding",
        action="store_true",
        help="every simulated node decodes every listing itself (see share_decoding)",
    )
    parser.add_argument("--connections", type=int, default=16, help="etcd clients per process")
    parser.add_argument("--renewers", type=int, default=50, help="nodes running LeaseKeepers")
    parser.add_argument("--renew-ttl", type=int, default=20, help="their lease TTL (s)")
    parser.add_argument("--renew-seconds", type=float, default=25, help="how long they run")
    parser.add_argument("--idle", type=float, default=20, help="seconds of daemon idle CPU")
    parser.add_argument("--quick", action="store_true", help="500 nodes, 200 watchers")
    parser.add_argument("--json", metavar="PATH", help="write the results (bench/benchjson.py)")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return fleet_child(args.inside, json.loads(args.spec))
    # SIGTERM (and SIGINT, which a background job ignores) unwind: namespaces and etcd go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.nodes, args.watchers, args.writes = 500, 200, 10
        args.renewers, args.renew_ttl, args.renew_seconds, args.idle = 20, 10, 12, 5
    if not 1 <= args.nodes <= 60000 or args.watchers < 1:
        parser.error("--nodes must be 1..60000 and --watchers at least 1")
    res = run(args)
    report(res)
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
