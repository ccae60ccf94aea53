"""The health server under hostile clients, with real sockets on loopback.

Before: 20 half-sent requests held 20 threads for more than 30 s (no timeout,
no cap) and a client resetting mid-request printed a traceback.  Now a
request must arrive within ``request_timeout``, connections beyond
``max_connections`` get 503 at once, and resets are logged quietly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from flannelish.node.health import MAX_CONNECTIONS, REQUEST_TIMEOUT_S, HealthServer, NodeState

pytestmark = pytest.mark.unit

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # no blank line: the request never ends


def handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def wait_until(predicate, timeout: float, step: float = 0.02) -> float:
    """Seconds until `predicate()` held; fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(step)
    return time.monotonic() - start


def connect(address) -> socket.socket:
    return socket.create_connection(address, timeout=5)


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(ConnectionError, TimeoutError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def healthz(address, timeout: float = 3.0) -> int:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/healthz", timeout=timeout) as r:
        return r.status


def rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def server() -> Iterator[HealthServer]:
    srv = HealthServer(
        NodeState(node="n1"), "127.0.0.1", 0, max_connections=8, request_timeout=1.0
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_defaults_are_documented_values_and_bind_address_is_flanneld_default():
    assert (REQUEST_TIMEOUT_S, MAX_CONNECTIONS) == (5.0, 16)
    import inspect

    assert inspect.signature(HealthServer).parameters["host"].default == "0.0.0.0"


def test_twenty_stalled_clients_hold_at_most_the_cap_and_are_cut_off_at_the_deadline(server):
    base = handler_threads()
    start = time.monotonic()
    clients = [connect(server.address) for _ in range(20)]
    for c in clients:
        c.sendall(HALF_SENT)
    time.sleep(0.3)
    assert handler_threads() - base <= 8
    # The 12 beyond the cap each evicted the oldest stalled one: those end at once.
    for c in clients[:12]:
        assert read_all(c, timeout=3.0) == b""
    assert time.monotonic() - start < 0.8
    # A probe arriving now is served: it evicts a stalled client, never waits for one.
    probe_start = time.monotonic()
    assert healthz(server.address) == 200
    assert time.monotonic() - probe_start < 0.5
    # The rest are disconnected at the 1 s deadline, without an answer.
    for c in clients[12:]:
        assert read_all(c, timeout=3.0) == b""
    held = time.monotonic() - start
    assert 0.9 < held < 2.0, held
    wait_until(lambda: handler_threads() == base, 2.0)
    text = server._httpd.state.metrics_text().decode()
    assert "flannelish_health_connections_evicted_total 13.0" in text  # 12 + the probe
    assert "flannelish_health_request_timeouts_total 7.0" in text
    for c in clients:
        c.close()


def test_when_every_slot_is_answering_a_new_connection_gets_503_at_once():
    hang = threading.Event()
    state = NodeState(etcd_probe=lambda: hang.wait(10), etcd_timeout=2.0)
    srv = HealthServer(state, "127.0.0.1", 0, max_connections=2, request_timeout=1.0).start()
    try:
        busy = [connect(srv.address) for _ in range(2)]
        for c in busy:  # complete requests, answered slowly (the etcd probe hangs)
            c.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        start = time.monotonic()
        extra = connect(srv.address)
        extra.sendall(HALF_SENT)
        answer = read_all(extra, timeout=3.0)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable"), answer[:40]
        assert b"Retry-After: 1" in answer
        assert time.monotonic() - start < 0.5
        assert "flannelish_health_connections_rejected_total 1.0" in state.metrics_text().decode()
        for c in busy:
            assert read_all(c, timeout=5.0).startswith(b"HTTP/1.1 503 ")  # not ready: etcd
            c.close()
        extra.close()
    finally:
        hang.set()
        srv.stop()


def test_a_client_dribbling_bytes_is_cut_at_the_deadline_whatever_its_rate(server):
    sock = connect(server.address)
    start = time.monotonic()
    closed_after = None
    try:
        for byte in HALF_SENT * 10:
            sock.sendall(bytes([byte]))
            time.sleep(0.05)
            if time.monotonic() - start > 3:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - start
    if closed_after is None:  # the write side may still be open: the read side says EOF
        assert read_all(sock, 1.0) == b""
        closed_after = 1.0
    assert closed_after < 2.0
    sock.close()


def test_idle_keepalive_connection_is_closed_after_the_timeout(server):
    sock = connect(server.address)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(3)
    first = b""
    while not first.endswith(b"flannelish is running\n"):
        first += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ")
    start = time.monotonic()
    assert read_all(sock, 3.0) == b""
    assert 0.7 < time.monotonic() - start < 2.0
    sock.close()


def test_a_slow_probe_does_not_block_others_and_the_flood_does_not_block_admitted_ones():
    srv = HealthServer(NodeState(), "127.0.0.1", 0, max_connections=4, request_timeout=5.0)
    srv.start()
    try:
        stalled = [connect(srv.address) for _ in range(3)]
        for c in stalled:
            c.sendall(HALF_SENT)
        time.sleep(0.2)
        start = time.monotonic()
        assert healthz(srv.address) == 200  # the 4th slot is free
        assert time.monotonic() - start < 0.5
        for c in stalled:
            c.close()
    finally:
        srv.stop()


def test_client_resets_and_disconnects_leave_no_traceback(server, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    for i in range(30):
        sock = connect(server.address)
        if i % 3 == 0:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        elif i % 3 == 1:
            sock.sendall(b"GET /sta")
        rst_close(sock)
    for _ in range(10):  # ask, then vanish before the answer is read
        sock = connect(server.address)
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    time.sleep(0.5)
    assert healthz(server.address) == 200
    records = [r for r in caplog.records if r.name.startswith("flannelish")]
    assert not [r for r in records if r.levelno >= logging.WARNING], records
    assert not [r for r in records if r.exc_info]
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_oversized_request_line_and_headers_get_4xx_not_a_stuck_thread(server):
    for request in (
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 150 + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
    ):
        sock = connect(server.address)
        with contextlib.suppress(ConnectionError):
            sock.sendall(request)
        answer = read_all(sock, 3.0)
        assert answer[:12] in (b"HTTP/1.1 414", b"HTTP/1.1 431", b"HTTP/1.1 400"), answer[:40]
        sock.close()
    assert healthz(server.address) == 200
