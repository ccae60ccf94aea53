"""Benchmark: flannelish-cni vs the reference bridge + host-local, side by side.

Everything runs in namespaces this script creates and removes: one "host"
namespace (this process enters it with setns, so every plugin it starts runs
there, as under a runtime) and pre-created pod namespaces.  Each variant has
its own bridge and /24 with the same settings (isGateway, MTU 1450, ipMasq
off), and the variants are interleaved in every round so machine noise hits
them alike.  Variants:

  reference     /usr/lib/cni/bridge + host-local
  daemon        flannelish-cni as `install-cni` installs it (the native launcher when
                a C compiler exists) -> CniServer process
  daemon-py     the Python launcher (python -IS) -> CniServer (only with native)
  daemon-pip    the pip console script (.venv/bin/flannelish-cni) -> CniServer
  inproc        the Python launcher, no daemon (work done in the plugin)

Printed: ADD and DEL p50/p90/p99 (ms) at concurrency 1 and 8, ratios against
the reference measured in the same run, and peak RSS per plugin process.

    .venv/bin/python bench/cni.py [--rounds 30] [--batches 4] [--quick] [--json PATH]

--json writes bench/benchjson.py's format: figures cni.<OP>.c<CONC>.<variant>.p50/p90/p99
(ms, baseline = reference in the same run), cni.rss.<variant> (MiB), and the raw
samples cni.<OP>.c<CONC>.<variant> (ms per call).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchjson import Results, pct
from flannelish.cni.install import install

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import stop_pid

CLONE_NEWNET = 0x40000000
VENV_BIN = Path(sys.executable).parent


def enter_netns(name: str) -> None:
    """Move this process's main thread (and so all later threads/children) into `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


class Variant:
    def __init__(self, name: str, binary: str, conf: dict) -> None:
        self.name, self.binary, self.conf = name, binary, json.dumps(conf).encode()
        self.short = conf["name"]  # unique per variant: used in namespace names
        self.samples: dict[tuple[str, int], list[float]] = {}
        self.rss_kb: list[int] = []
        self.errors: list[str] = []

    def env(self, command: str, cid: str, netns: str) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": f"/run/netns/{netns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/usr/lib/cni",
        }

    def call(self, command: str, cid: str, netns: str) -> float:
        env = self.env(command, cid, netns)
        start = time.perf_counter()
        proc = subprocess.run(
            [self.binary], input=self.conf, env=env, capture_output=True, check=False
        )
        elapsed = (time.perf_counter() - start) * 1000
        if proc.returncode != 0:
            self.errors.append(f"{command} {cid}: {proc.stdout[:200]!r} {proc.stderr[:200]!r}")
        return elapsed

    def measure_rss(self, command: str, cid: str, netns: str) -> None:
        """Peak RSS of one plugin process via GNU time: a wait4() on a child forked
        from this (big) Python process would report the parent's pages instead."""
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "RSS %M", self.binary],
            input=self.conf,
            env=self.env(command, cid, netns),
            capture_output=True,
            check=False,
        )
        for line in proc.stderr.decode().splitlines():
            if line.startswith("RSS "):
                self.rss_kb.append(int(line.split()[1]))

    def record(self, command: str, conc: int, ms: float) -> None:
        self.samples.setdefault((command, conc), []).append(ms)


def run_rounds(variants: list[Variant], factory: NetnsFactory, rounds: int, batches: int) -> None:
    # concurrency 1: every round, each variant (shuffled order) does one ADD then one DEL
    for r in range(rounds):
        order = variants[:]
        random.shuffle(order)
        for v in order:
            ns = factory.create(f"{v.short}{r}")
            v.record("ADD", 1, v.call("ADD", f"c{r}", ns))
            v.record("DEL", 1, v.call("DEL", f"c{r}", ns))
            subprocess.run(["ip", "netns", "del", ns], check=False)
            factory.created.remove(ns)
    # concurrency 8: batches of 8 parallel ADDs, then 8 parallel DELs, variants interleaved
    with ThreadPoolExecutor(max_workers=8) as pool:
        for b in range(batches):
            order = variants[:]
            random.shuffle(order)
            for v in order:
                names = [factory.create(f"{v.short}b{b}x{i}") for i in range(8)]
                for command in ("ADD", "DEL"):
                    futures = [
                        pool.submit(v.call, command, f"b{b}x{i}", ns) for i, ns in enumerate(names)
                    ]
                    for f in futures:
                        v.record(command, 8, f.result())
                for ns in names:
                    subprocess.run(["ip", "netns", "del", ns], check=False)
                    factory.created.remove(ns)


def report(variants: list[Variant], server_rss_kb: int, out: Results | None = None) -> None:
    ref = variants[0]
    print()
    header = (
        f"{'variant':<12} {'op':<4} {'conc':>4} {'n':>4} {'p50':>8} {'p90':>8} {'p99':>8}"
        f"   {'p50/ref':>7} {'p90/ref':>7} {'p99/ref':>7}"
    )
    print(header)
    print("-" * len(header))
    for command in ("ADD", "DEL"):
        for conc in (1, 8):
            base = ref.samples[(command, conc)]
            for v in variants:
                xs = v.samples[(command, conc)]
                row = [pct(xs, q) for q in (50, 90, 99)]
                ratio = [row[i] / pct(base, q) for i, q in enumerate((50, 90, 99))]
                if out is not None:
                    key = f"cni.{command}.c{conc}.{v.name}"
                    out.samples(key, xs, "ms")
                    for q, value in zip(("p50", "p90", "p99"), row, strict=True):
                        base_q = pct(base, {"p50": 50, "p90": 90, "p99": 99}[q])
                        goal = "<= 1.0x" if q == "p99" and v.name == "daemon" else None
                        out.figure(f"{key}.{q}", value, "ms", base_q, "reference", goal)
                print(
                    f"{v.name:<12} {command:<4} {conc:>4} {len(xs):>4} "
                    + " ".join(f"{x:8.1f}" for x in row)
                    + "   "
                    + " ".join(f"{x:7.2f}" for x in ratio)
                )
            print()
    print("peak RSS per plugin process (GNU time, 3 ADD + 3 DEL each):")
    for v in variants:
        if v.rss_kb:
            peak, median = max(v.rss_kb) / 1024, statistics.median(v.rss_kb) / 1024
            print(f"  {v.name:<12} {peak:6.1f} MiB  (median {median:.1f})")
            if out is not None:
                out.figure(f"cni.rss.{v.name}", peak, "MiB", max(ref.rss_kb) / 1024, "reference")
    print(f"  CniServer process (daemon side, VmHWM): {server_rss_kb / 1024:.1f} MiB")
    if out is not None:
        out.figure("cni.rss.server", server_rss_kb / 1024, "MiB")
    for v in variants:
        if v.errors:
            print(f"\n{v.name}: {len(v.errors)} failed calls, first: {v.errors[0]}")
            if out is not None:
                out.note(f"{v.name}: {len(v.errors)} failed calls, first: {v.errors[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="concurrency-1 rounds")
    parser.add_argument("--batches", type=int, default=4, help="concurrency-8 batches")
    parser.add_argument("--quick", action="store_true", help="8 rounds, 1 batch (development)")
    parser.add_argument("--json", metavar="PATH", help="write the results (bench/benchjson.py)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batches = 8, 1
    out = Results("cni", args.json, rounds=args.rounds, batches=args.batches)
    if os.geteuid() != 0:
        sys.exit("bench/cni.py needs root (it creates network namespaces)")

    factory = NetnsFactory("flbn")
    factory.remove_leftovers()
    tmp = Path(tempfile.mkdtemp(prefix="flbench-"))
    server = None
    try:
        host = factory.create("host")
        launcher, _conf, how = install(
            str(tmp / "bin"), str(tmp / "conf"), "bench", str(tmp / "run" / "subnet.env")
        )
        native = (tmp / "bin" / "flannelish-cni.py").exists()
        py_launcher = str(tmp / "bin" / "flannelish-cni.py") if native else launcher
        print(f"installed: {how}")
        sock = str(tmp / "run" / "flannelish.sock")
        common = {"cniVersion": "1.0.0", "isGateway": True, "mtu": 1450, "ipMasq": False}

        def ipam(octet: int) -> dict:
            return {
                "type": "host-local",
                "subnet": f"10.244.{octet}.0/24",
                "dataDir": str(tmp / "data"),
            }

        ref = Variant(
            "reference",
            "/usr/lib/cni/bridge",
            dict(common, name="ref", type="bridge", bridge="rbr0", ipam=ipam(20)),
        )
        fl = dict(common, type="flannelish-cni", daemonSocket=sock)
        daemon = Variant("daemon", launcher, dict(fl, name="fld", bridge="fbr0", ipam=ipam(21)))
        daemon_py = Variant(
            "daemon-py", py_launcher, dict(fl, name="fly", bridge="fbr3", ipam=ipam(24))
        )
        daemon_pip = Variant(
            "daemon-pip",
            str(VENV_BIN / "flannelish-cni"),
            dict(fl, name="flp", bridge="fbr1", ipam=ipam(22)),
        )
        inproc = Variant(
            "inproc",
            py_launcher,
            dict(fl, name="fli", bridge="fbr2", ipam=ipam(23), daemonSocket=str(tmp / "none.sock")),
        )
        variants = (
            [ref, daemon, daemon_py, daemon_pip, inproc]
            if native
            else [ref, daemon, daemon_pip, inproc]
        )

        enter_netns(host)  # from here on this process and its children live in the host netns
        env = dict(os.environ, GRPC_ENABLE_FORK_SUPPORT="false")
        server = subprocess.Popen(
            [sys.executable, "-m", "flannelish.cni.server", "--socket", sock],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert server.stdout is not None
        if not server.stdout.readline().startswith(b"ready"):
            sys.exit("CniServer did not start")
        # warm-up: bridges created, caches filled, first-call costs out of the figures
        for v in variants:
            ns = factory.create(f"w{v.short}")
            v.call("ADD", "warm", ns)
            v.call("DEL", "warm", ns)
            v.errors.clear()
        print(
            f"interleaved run: {args.rounds} rounds at concurrency 1, "
            f"{args.batches}x8 at concurrency 8, {os.cpu_count()} CPUs"
        )
        run_rounds(variants, factory, args.rounds, args.batches)
        if os.path.exists("/usr/bin/time"):
            for v in variants:
                for i in range(3):
                    ns = factory.create(f"r{v.short}{i}")
                    v.measure_rss("ADD", f"rss{i}", ns)
                    v.measure_rss("DEL", f"rss{i}", ns)
        with open(f"/proc/{server.pid}/status") as fh:
            hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
        report(variants, hwm, out)
        out.write()
    finally:
        if server is not None:
            stop_pid(server.pid, proc=server)
        factory.cleanup()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
