"""Lease manager benchmark: acquisition latency and watch propagation, 100 simulated nodes.

One etcd on the loopback (flannelish.testing.start_etcd), N simulated nodes,
each with its own etcd client, all in this process.  Every figure is printed
next to a baseline measured in the same run with the bare etcd client
(pyetcd), so the ratio shows what the lease manager adds:

* acquire: SubnetManager.acquire (config read, list, grant, create-only txn)
  for each node in turn, against a raw ``put`` of the same value; then all
  nodes at once (a cluster boot, with lost races retried) against as many
  concurrent raw puts;
* propagation: a lease written by the bare client → the event delivered by
  N ``watch_leases`` iterators, against N raw pyetcd prefix watches.  Each
  sample is (arrival in the watcher thread) minus (just before the put).

Run: GRPC_ENABLE_FORK_SUPPORT=false .venv/bin/python bench/leases.py [--nodes 100]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from benchjson import Results, pct

from flannelish.subnet.etcdstore import EtcdOptions

# The watcher processes are spawned, not forked; this also keeps gRPC quiet if
# anything forks (etcd itself is started with fork+exec).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
from flannelish.subnet.lease import LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.subnet.registry import EtcdRegistry
from flannelish.testing.etcd import start_etcd

CONFIG = b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
PREFIX = "/coreos.com/network/subnets/"


def attrs(i: int) -> LeaseAttrs:
    return LeaseAttrs(
        IPv4Address(f"198.18.{i // 250}.{i % 250 + 1}"),
        "vxlan",
        {"VNI": 1, "VtepMAC": f"0a:00:00:00:{i // 256:02x}:{i % 256:02x}"},
    )


def bare_client(url: str):  # type: ignore[no-untyped-def]
    import pyetcd

    host, port = url.removeprefix("http://").rsplit(":", 1)
    return pyetcd.client(host, int(port), timeout=5)


# -- acquisition ---------------------------------------------------------------


def bench_acquire(url: str, nodes: int) -> tuple[list[float], list[float]]:
    raw = bare_client(url)
    base = []
    for i in range(nodes):
        value = attrs(i).to_json()
        t0 = time.perf_counter()
        raw.put(f"/bench/raw/{i}", value)
        base.append(time.perf_counter() - t0)
    raw.close()

    options = EtcdOptions.from_flags(endpoints=url)
    registries = [EtcdRegistry(options) for _ in range(nodes)]
    registries[0].put_config(CONFIG)
    ours = []
    for i, registry in enumerate(registries):
        manager = SubnetManager(registry)
        t0 = time.perf_counter()
        manager.acquire(attrs(i))
        ours.append(time.perf_counter() - t0)
    for registry in registries:
        registry.close()
    return ours, base


def bench_acquire_concurrent(url: str, nodes: int) -> tuple[list[float], list[float]]:
    """All nodes acquire at once (a cluster boot): lost races are retried."""

    def at_once(work: Callable[[int], None]) -> list[float]:
        barrier = threading.Barrier(nodes)
        took = [0.0] * nodes

        def one(i: int) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            work(i)
            took[i] = time.perf_counter() - t0

        threads = [threading.Thread(target=one, args=(i,)) for i in range(nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return took

    raws = [bare_client(url) for _ in range(nodes)]
    base = at_once(lambda i: raws[i].put(f"/bench/raw-concurrent/{i}", attrs(i).to_json()))
    for raw in raws:
        raw.close()
    options = EtcdOptions.from_flags(endpoints=url, prefix="/bench/concurrent")
    registries = [EtcdRegistry(options) for _ in range(nodes)]
    registries[0].put_config(CONFIG)
    managers = [SubnetManager(r) for r in registries]
    ours = at_once(lambda i: managers[i].acquire(attrs(i)) and None)
    subnets = {x.subnet for x in managers[0].list_leases()}
    if len(subnets) != nodes:
        raise SystemExit(f"concurrent acquire: {len(subnets)} distinct subnets for {nodes} nodes")
    for registry in registries:
        registry.close()
    return ours, base


# -- propagation ---------------------------------------------------------------
# The watchers run in WORKERS processes (nodes / WORKERS each), as real nodes
# would not share one interpreter: 200 threads behind one GIL would measure
# GIL hand-offs, not the watch path.  time.monotonic() is system-wide on
# Linux, so arrival and write times from different processes compare.


def _watch_worker(kind, url, first, count, expected, ready, go, out):  # type: ignore[no-untyped-def]
    import os

    os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
    lock = threading.Lock()
    times: dict[tuple[int, str], float] = {}
    done = threading.Event()

    def record(n: int, key: str) -> None:
        now = time.monotonic()
        with lock:
            times.setdefault((n, key), now)
            if len(times) >= count * expected:
                done.set()

    stop = threading.Event()
    closers: list[Callable[[], None]] = []
    if kind == "raw":
        for n in range(first, first + count):
            client = bare_client(url)

            def callback(response, n: int = n) -> None:  # type: ignore[no-untyped-def]
                for event in getattr(response, "events", []):
                    record(n, event.key.decode())

            wid = client.add_watch_prefix_callback("/bench/watch-raw/", callback)
            closers.append(lambda c=client, w=wid: (c.cancel_watch(w), c.close()))
    else:
        options = EtcdOptions.from_flags(endpoints=url)
        started = threading.Barrier(count + 1)

        def watcher(n: int, registry: EtcdRegistry) -> None:
            first_batch = True
            for batch in SubnetManager(registry).watch_leases(stop):
                if first_batch:
                    first_batch = False
                    started.wait()
                    continue
                for event in batch:
                    net = event.lease.subnet
                    record(n, f"{PREFIX}{net.network_address}-{net.prefixlen}")

        for n in range(first, first + count):
            registry = EtcdRegistry(options)
            threading.Thread(target=watcher, args=(n, registry), daemon=True).start()
            closers.append(registry.close)
        started.wait(timeout=60)
    time.sleep(0.3)  # the watch streams are open on the server
    ready.release()
    go.wait()
    done.wait(timeout=20)
    stop.set()
    with lock:
        out.put(dict(times))
    for close in closers:
        with contextlib.suppress(Exception):
            close()


def bench_propagation(
    kind: str, url: str, watchers: int, keys: list[str], gap: float, workers: int
) -> list[float]:
    times, started = propagation_times(kind, url, watchers, keys, gap, workers)
    missing = watchers * len(keys) - len(times)
    if missing:
        raise SystemExit(f"{kind}: {missing} events were not delivered within 20 s")
    return [t - started[key] for (_, key), t in times.items()]


def propagation_times(
    kind: str, url: str, watchers: int, keys: list[str], gap: float, workers: int
) -> tuple[dict[tuple[int, str], float], dict[str, float]]:
    """(watcher, key) -> arrival, and key -> put time (time.monotonic, system-wide)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    out = ctx.Queue()
    per = [watchers // workers + (1 if w < watchers % workers else 0) for w in range(workers)]
    procs, first = [], 0
    for count in per:
        proc = ctx.Process(
            target=_watch_worker, args=(kind, url, first, count, len(keys), ready, go, out)
        )
        proc.start()
        procs.append(proc)
        first += count
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise SystemExit("watch workers did not start")
    go.set()
    raw = bare_client(url)
    started = {}
    for i, key in enumerate(keys):
        started[key] = time.monotonic()
        raw.put(key, attrs(1000 + i).to_json())
        time.sleep(gap)
    raw.close()
    times: dict[tuple[int, str], float] = {}
    for _ in procs:
        times.update(out.get(timeout=60))
    for proc in procs:
        proc.join(timeout=30)
    return times, started


# -- report --------------------------------------------------------------------


def row(name: str, ours: list[float], base: list[float], base_name: str) -> str:
    p50, p99 = pct(ours, 50) * 1e3, pct(ours, 99) * 1e3
    b50, b99 = pct(base, 50) * 1e3, pct(base, 99) * 1e3
    return (
        f"{name:<34} {p50:8.2f} {p99:8.2f}   {base_name:<26} {b50:8.2f} {b99:8.2f}"
        f"   {p50 / b50:6.2f}x {p99 / b99:6.2f}x   n={len(ours)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100, help="simulated nodes / watchers")
    parser.add_argument("--writes", type=int, default=30, help="lease writes to propagate")
    parser.add_argument("--gap-ms", type=float, default=30, help="pause between writes")
    parser.add_argument("--workers", type=int, default=4, help="watcher processes")
    parser.add_argument("--json", metavar="PATH", help="write the results (bench/benchjson.py)")
    args = parser.parse_args()
    out = Results("leases", args.json, nodes=args.nodes, writes=args.writes)

    member = start_etcd(name="bench")
    try:
        url = member.client_url
        acquire, put = bench_acquire(url, args.nodes)
        acquire_all, put_all = bench_acquire_concurrent(url, args.nodes)
        gap = args.gap_ms / 1000
        raw_keys = [f"/bench/watch-raw/{i}" for i in range(args.writes)]
        nets = [IPv4Network(f"10.244.{200 + i // 64}.{i % 64 * 4}/30") for i in range(args.writes)]
        our_keys = [f"{PREFIX}{n.network_address}-{n.prefixlen}" for n in nets]
        prop_raw = bench_propagation("raw", url, args.nodes, raw_keys, gap, args.workers)
        prop_ours = bench_propagation("ours", url, args.nodes, our_keys, gap, args.workers)
    finally:
        member.destroy()

    measure: Callable[[list[float]], float] = statistics.mean
    print(
        f"flannelish lease benchmark: 1 etcd on loopback, {args.nodes} simulated nodes, "
        f"watchers in {args.workers} processes, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'metric (ms)':<34} {'p50':>8} {'p99':>8}   {'baseline':<26} {'p50':>8} {'p99':>8}"
        f"   {'ratio p50':>7} {'p99':>6}"
    )
    print(row("acquire, one node at a time", acquire, put, "raw etcd put"))
    print(
        row(
            f"acquire, {args.nodes} nodes at once",
            acquire_all,
            put_all,
            f"{args.nodes} raw puts at once",
        )
    )
    print(
        row(
            f"propagation to {args.nodes} watch_leases",
            prop_ours,
            prop_raw,
            f"raw pyetcd watch x{args.nodes}",
        )
    )
    goal = pct(prop_ours, 99) * 1e3
    print(
        f"goal: propagation p99 < 50 ms: {'met' if goal < 50 else 'NOT met'} ({goal:.1f} ms); "
        f"mean acquire {measure(acquire) * 1e3:.2f} ms"
    )
    for name, ours, base, base_name in (
        ("acquire", acquire, put, "raw etcd put"),
        ("acquire_all", acquire_all, put_all, "raw puts at once"),
        ("propagation", prop_ours, prop_raw, "raw pyetcd watch"),
    ):
        out.samples(f"leases.{name}", [x * 1e3 for x in ours], "ms")
        out.samples(f"leases.{name}.baseline", [x * 1e3 for x in base], "ms")
        for q in (50, 99):
            goal = "< 50 ms" if name == "propagation" and q == 99 else None
            out.figure(
                f"leases.{name}.p{q}", pct(ours, q) * 1e3, "ms", pct(base, q) * 1e3, base_name, goal
            )
    out.write()


if __name__ == "__main__":
    main()
