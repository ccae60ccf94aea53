"""Churn soak: 100 lease events/s among 500 simulated peers for
FLANNELISH_SOAK_SECONDS (default 60) while a pod pings a pod on a stable real
peer.  Afterwards: 0 loss, kernel == etcd on both real nodes after a short
settle, and the daemons' RSS and open FDs flat (start/end figures printed).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.underlay import Underlay

from .drillkit import DrillEnv, SimPeers, kernel_vs_etcd, proc_figures
from .helpers import wait_for

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("FLANNELISH_SOAK_SECONDS", "60"))
RATE = 100  # lease events per second
PEERS = 500
SETTLE_S = 5.0  # kernel == etcd at most this long after the last event
MAX_RSS_GROWTH_KB = 20 * 1024
MAX_FD_GROWTH = 10


@pytest.fixture
def env(underlay: Underlay, netns_factory: NetnsFactory, tmp_path) -> Iterator[DrillEnv]:
    drill = DrillEnv(underlay, netns_factory, tmp_path)
    try:
        yield drill
    finally:
        drill.close()


def test_churn_soak_100_events_per_second_among_500_peers(env: DrillEnv) -> None:
    env.start_etcd()
    env.start_nodes(2)
    a, b = env.nodes
    writer = env.writer
    assert writer is not None
    sim = SimPeers(env.taken)
    writer.put(sim.populate(PEERS))
    for node in env.nodes:
        leases = writer.leases()
        wait_for(lambda n=node, ls=leases: not kernel_vs_etcd(n.host, ls, n.subnet), 60, 0.2,
                 f"500 peers on {node.host.name}")  # fmt: skip
    ops, kinds = sim.churn(int(SECONDS * RATE), PEERS)
    start = {n.host.name: proc_figures(n.pid) for n in env.nodes}
    peak = {name: dict(fig) for name, fig in start.items()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(2.0):
            for n in env.nodes:
                if n.alive():
                    for k, v in proc_figures(n.pid).items():
                        peak[n.host.name][k] = max(peak[n.host.name][k], v)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pinger = env.ping(a, b)
    try:
        run = writer.request({"op": "run", "rate": RATE, "ops": ops}, timeout=SECONDS * 3 + 60)
        churn_end = time.monotonic()
        leases = writer.leases()
        settle: dict[str, float] = {}
        diffs: dict[str, object] = {}
        for node in env.nodes:
            deadline = churn_end + SETTLE_S
            while True:
                diffs[node.host.name] = kernel_vs_etcd(node.host, leases, node.subnet)
                if not diffs[node.host.name] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            settle[node.host.name] = round(time.monotonic() - churn_end, 2)
        time.sleep(0.5)
    finally:
        result = pinger.stop()
        done.set()
        sampler.join(timeout=5)
    alive = {n.host.name: n.alive() for n in env.nodes}
    end = {n.host.name: proc_figures(n.pid) for n in env.nodes if n.alive()}
    print(
        f"\n[soak] {len(ops)} events in {run['seconds']} s ({kinds}; writer max lag "
        f"{run['max_lag']} s, {run['slow']} events >0.1 s late), {len(leases)} leases at the end",
        flush=True,
    )
    for name in start:
        print(f"[soak] {name}: start {start[name]}, end {end.get(name)}, peak {peak[name]}, "
              f"kernel == etcd {settle[name]} s after the last event", flush=True)  # fmt: skip
    print(f"[soak] ping to the stable peer: {result}", flush=True)
    assert all(alive.values()), [n.daemon.log_tail() for n in env.nodes]
    assert run["seconds"] < SECONDS * 1.2, f"the writer could not keep {RATE}/s: {run}"
    assert not any(diffs.values()), f"kernel != etcd {SETTLE_S} s after the churn: {diffs}"
    assert result.lost == 0, result
    for name, fig in start.items():
        grew = {k: end[name][k] - fig[k] for k in fig}
        assert grew["rss_kb"] < MAX_RSS_GROWTH_KB, f"{name} RSS grew {grew['rss_kb']} kB"
        assert grew["fds"] < MAX_FD_GROWTH, f"{name} open FDs grew by {grew['fds']}"
    for node in env.nodes:
        assert "Traceback" not in node.daemon.log_path.read_text()
