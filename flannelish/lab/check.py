"""`flannelish lab check`: every pod pings every other pod, and a no-NAT probe.

Pings run from inside the source pod's namespace (so they take the real
path: pod veth -> cni0 -> flannel.N -> underlay -> ...), a handful at a time
so the whole matrix finishes in a few seconds.  The no-NAT probe runs a
server in the first pod and asks it, from every other pod, which source
address it saw: over TCP and UDP, it must be the asking pod's own IP.
"""

from __future__ import annotations

import re
import select
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flannelish.lab import procs
from flannelish.lab.probe import DEFAULT_PORT, READY
from flannelish.lab.state import LabState, PodState
from flannelish.testing.proc import in_netns, run

PING_COUNT = 3
PARALLEL = 6
# When two WireGuard peers start a handshake at the same instant, each drops the
# other's response (both sides' state moved on to answering) and both retry after
# REKEY_TIMEOUT, 5 s plus up to 1/3 s of jitter: the first packets between two fresh
# nodes can wait that long (kernel WireGuard and wireguard-go alike). Over WireGuard a
# ping is given that long for its replies; they are queued, not lost.
WIREGUARD_FIRST_CONTACT_S = 6

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_RTT = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+/[\d.]+ ms")


@dataclass
class PingResult:
    src: str
    dst: str
    src_ip: str
    dst_ip: str
    same_node: bool
    family: int = 4
    sent: int = 0
    received: int = 0
    rtt_avg_ms: float | None = None
    error: str = ""

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent and not self.error


@dataclass
class NatResult:
    client: str
    server: str
    client_ip: str
    server_ip: str
    proto: str
    same_node: bool
    family: int = 4
    seen: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.seen == self.client_ip


@dataclass
class CheckReport:
    pings: list[PingResult] = field(default_factory=list)
    nat: list[NatResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(p.ok for p in self.pings) and all(n.ok for n in self.nat)


def parse_ping(output: str) -> tuple[int, int, float | None]:
    """(sent, received, average RTT in ms) from iputils ping's summary."""
    summary = _SUMMARY.search(output)
    if summary is None:
        return 0, 0, None
    rtt = _RTT.search(output)
    return int(summary.group(1)), int(summary.group(2)), float(rtt.group(1)) if rtt else None


def ping(
    src: PodState, dst: PodState, count: int = PING_COUNT, family: int = 4, settle_s: int = 0
) -> PingResult:
    """Ping `dst`'s address of IP version `family` from inside `src`; `settle_s` more
    seconds for the replies when the path may first need a handshake."""
    src_ip, dst_ip = src.addr(family), dst.addr(family)
    result = PingResult(src.name, dst.name, src_ip, dst_ip, src.node == dst.node, family)
    # -W: how long ping waits for replies after its last packet when none came yet.
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(1 + settle_s), dst_ip]
    proc = run(argv, netns=src.netns, check=False, timeout=10 + count + settle_s)
    result.sent, result.received, result.rtt_avg_ms = parse_ping(proc.stdout)
    if result.sent == 0:
        result.error = (proc.stderr or proc.stdout).strip() or f"ping exited {proc.returncode}"
    return result


def ping_matrix(state: LabState, count: int = PING_COUNT) -> list[PingResult]:
    """Every pod pair, in every family the lab carries."""
    jobs = []
    for family in state.spec.families:
        pods = [p for p in state.pods if p.addr(family)]
        jobs += [(a, b, family) for a in pods for b in pods if a is not b]
    settle_s = WIREGUARD_FIRST_CONTACT_S if state.spec.backend == "wireguard" else 0
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(lambda job: ping(job[0], job[1], count, job[2], settle_s), jobs))


class ProbeServer:
    """`probe serve` in a pod namespace, as our own child; always stopped on exit."""

    def __init__(self, pod: PodState, port: int = DEFAULT_PORT) -> None:
        self.pod = pod
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ProbeServer:
        argv = [sys.executable, "-m", "flannelish.lab.probe", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            in_netns(self.pod.netns, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != READY:
            self.__exit__()
            raise RuntimeError(f"probe server in {self.pod.name} did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def ask(
    client: PodState,
    server: PodState,
    proto: str,
    size: int = 64,
    port: int = DEFAULT_PORT,
    family: int = 4,
) -> tuple[str, str]:
    """(address the server saw, error) for one probe from `client` to `server`'s
    address of IP version `family` (its only address in an IPv6-only lab)."""
    argv = [sys.executable, "-m", "flannelish.lab.probe", "ask", "--proto", proto,
            "--bytes", str(size), server.addr(family) or server.ip, str(port)]  # fmt: skip
    proc = run(argv, netns=client.netns, check=False, timeout=15)
    if proc.returncode != 0:
        return "", (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
    seen, _, received = proc.stdout.strip().partition(" ")
    if received and int(received) != size:
        return seen, f"server received {received} of {size} bytes"
    return seen, ""


def nat_check(state: LabState) -> list[NatResult]:
    """From every other pod to the first one, TCP and UDP, in every family."""
    pods = [p for p in state.pods if p.ip]
    if len(pods) < 2:
        return []
    server, clients = pods[0], pods[1:]
    jobs = [
        (c, proto, family)
        for family in state.spec.families
        for c in clients
        if c.addr(family) and server.addr(family)
        for proto in ("tcp", "udp")
    ]

    def one(job: tuple[PodState, str, int]) -> NatResult:
        client, proto, family = job
        res = NatResult(client.name, server.name, client.addr(family), server.addr(family),
                        proto, client.node == server.node, family)  # fmt: skip
        res.seen, res.error = ask(client, server, proto, family=family)
        return res

    with ProbeServer(server), ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(one, jobs))


def check(state: LabState, count: int = PING_COUNT) -> CheckReport:
    report = CheckReport()
    if len([p for p in state.pods if p.ip]) < 2:
        report.problems.append("the lab has fewer than two pods; nothing to check")
        return report
    for rec in state.procs():
        if not procs.is_ours(rec):
            report.problems.append(f"{rec.role} (pid {rec.pid}) is not running; see {rec.log}")
    report.pings = ping_matrix(state, count)
    try:
        report.nat = nat_check(state)
    except RuntimeError as exc:
        report.problems.append(str(exc))
    return report
