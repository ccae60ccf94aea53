"""TCP/UDP reachability probes between pods in network namespaces, from one process.

Sockets are created by threads that entered the pod's namespace
(flannelish.kernel.netns.in_netns), so servers and clients of every pod live
in this process: no helper processes, probes in parallel with short timeouts.
A TCP probe is a completed connect; a UDP probe is a datagram answered by the
server (the answer is a reply: it passes only through conntrack).

UDP probes send from source ports taken in turn from a range below the
kernel's ephemeral ports: a random source port could match a conntrack entry
an earlier probe of the same pair left behind (UDP entries live 30-120 s), and
that "established" flow would pass a policy that denies new ones.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import selectors
import socket
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from flannelish.kernel.netns import in_netns
from flannelish.sockets import listening_socket

# 12000 ports in turn: a port comes back only after 12000 UDP probes, by then
# its conntrack entries are gone (a few hundred probes a second at most).  The
# start is random per process: two `lab check --policy` runs in a row must not
# replay the same ports in the same order (the second would find the first's
# entries and see "established" where the policy now denies).
_UDP_FIRST, _UDP_END = 20000, 32000
_start = random.randrange(_UDP_FIRST, _UDP_END)
_UDP_SOURCE_PORTS = itertools.cycle([*range(_start, _UDP_END), *range(_UDP_FIRST, _start)])
_UDP_SOURCE_LOCK = threading.Lock()


def _bind_udp_source(s: socket.socket, ipv6: bool) -> None:
    """Bind to the next source port; a port taken by someone else: the kernel picks one."""
    with _UDP_SOURCE_LOCK:
        port = next(_UDP_SOURCE_PORTS)
    with contextlib.suppress(OSError):
        s.bind(("::" if ipv6 else "0.0.0.0", port))


class PodServers:
    """Listeners on `ports` (TCP and UDP) inside each namespace; one thread serves them all.

    With ``ipv6`` every port is served on IPv6 as well (separate, v6-only sockets).
    """

    def __init__(
        self, netns_of: dict[str, str], ports: Iterable[int] = (80, 81), ipv6: bool = False
    ) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        families = (socket.AF_INET, socket.AF_INET6) if ipv6 else (socket.AF_INET,)
        for ns in netns_of.values():
            with in_netns(ns):
                for port in ports:
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        for fam in families:
                            self._listen(fam, kind, port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="pod-servers", daemon=True)
        self._thread.start()

    def _listen(self, fam: int, kind: int, port: int) -> None:
        s = listening_socket(fam, kind, port, backlog=128)
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)
        self.socks.append(s)

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(timeout=0.2):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                with contextlib.suppress(OSError):
                    if s.type == socket.SOCK_STREAM:
                        conn, _ = s.accept()
                        conn.close()
                    else:
                        data, peer = s.recvfrom(2048)
                        s.sendto(data, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for s in self.socks:
            s.close()
        self.sel.close()


def probe(netns: str, ip: str, proto: str, port: int, timeout: float = 0.4) -> bool:
    kind = socket.SOCK_STREAM if proto.upper() == "TCP" else socket.SOCK_DGRAM
    with in_netns(netns):
        s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind)
    try:
        s.settimeout(timeout)
        if kind == socket.SOCK_STREAM:
            try:
                s.connect((ip, port))
                return True
            except OSError:
                return False
        _bind_udp_source(s, ":" in ip)
        for _ in range(2):  # one retransmission: a lost datagram is not a denial
            try:
                s.sendto(b"probe", (ip, port))
                s.recvfrom(64)
                return True
            except OSError:
                continue
        return False
    finally:
        s.close()


def probe_matrix(
    netns_of: dict[str, str],
    ip_of: dict[str, str],
    probes: Iterable[tuple[str, int]],
    timeout: float = 0.4,
    workers: int = 48,
) -> dict[tuple[str, str, str, int], bool]:
    """{(src pod, dst pod, proto, port): reachable} for every ordered pair and probe."""
    jobs = [(a, b, proto, port) for a in netns_of for b in ip_of for proto, port in probes]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda j: probe(netns_of[j[0]], ip_of[j[1]], j[2], j[3], timeout), jobs)
        return dict(zip(jobs, results, strict=True))
