"""The health HTTP server: ``/healthz`` ``/readyz`` ``/metrics`` ``/status`` of a NodeState.

Hardening: the port is reachable by anyone on the node's networks (flanneld's
default bind address is 0.0.0.0, kept for compatibility; README, operator's
guide), so a client gets nothing it can hold:

* ``request_timeout`` (5 s): a request line and headers must arrive within it
  (and an idle keep-alive connection is closed after it); a slow or stalled
  client is disconnected, whatever its byte rate.  Socket writes time out
  one second after it.
* ``max_connections`` (16) handler threads at most.  When all are busy, a new
  connection first evicts the oldest connection that has not finished sending
  its request (a stalled client; a real probe sends its request at once), so
  stalled clients cannot lock probes out; if every admitted connection is
  already being answered, the new one gets ``503`` from the accepting thread
  and is closed, holding no thread.
* A client that resets or disconnects mid-request is logged at debug level
  only: no traceback.  Unexpected handler errors still answer 500 and log
  one line with the error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from flannelish.errors import ConfigError, NotAvailableError

if TYPE_CHECKING:
    from flannelish.node.health import NodeState

log = logging.getLogger("flannelish.node.health")

REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16
_LINGER_S = 1.0  # a rejected connection is closed after this (or the client's EOF)
_MAX_LINGERING = 256  # beyond this, rejected connections are closed at once
# The client vanished or stalled: routine on a port anyone can reach, never a traceback.
_CLIENT_GONE = (ConnectionError, TimeoutError, socket.timeout, BrokenPipeError)
_BUSY_BODY = b"too many connections\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Garbage or HTTP/0.9-style request lines still get a status line (0.9 has none).
    default_request_version = "HTTP/1.0"
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def setup(self) -> None:
        # Every socket read and write; one second more than the request deadline, so
        # a stalled request is always ended (and counted) by the deadline watchdog.
        super().setup()
        self.connection.settimeout(self.server.request_timeout + 1.0)

    def handle_one_request(self) -> None:
        # Request line and headers (or, on keep-alive, the next request) within the limit.
        self.server.set_deadline(self.connection, time.monotonic() + self.server.request_timeout)
        try:
            super().handle_one_request()
        except _CLIENT_GONE as exc:
            self.close_connection = True
            log.debug("health client %s went away: %s", self.client_address[0], exc)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.set_deadline(self.connection, None)  # read: now our turn, no deadline
        return ok

    def send_response(self, code: int, message: str | None = None) -> None:
        # HTTP/0.9 answers have no status line or headers: answer as 1.0 instead, always.
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
            self.close_connection = True
        super().send_response(code, message)

    def do_GET(self) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                self._send(200, b"flannelish is running\n")
            elif path == "/readyz":
                ok, checks = state.ready()
                lines = [f"[{'+' if c.ok else '-'}]{c.name} {c.detail}".rstrip() for c in checks]
                lines.append("ready" if ok else "not ready")
                self._send(200 if ok else 503, ("\n".join(lines) + "\n").encode())
            elif path == "/metrics":
                self._send(200, state.metrics_text(), CONTENT_TYPE_LATEST)
            elif path == "/status":
                body = json.dumps(state.status(), indent=2).encode() + b"\n"
                self._send(200, body, "application/json")
            else:
                self._send(404, b"not found; try /healthz /readyz /metrics /status\n")
        except _CLIENT_GONE:
            raise  # handled quietly in handle_one_request
        except Exception as exc:  # a broken handler must not kill the daemon
            log.error("health endpoint %s failed: %s: %s", path[:100], type(exc).__name__, exc)
            self._send(500, b"internal error\n")

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health %s", format % args)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap and a request-read deadline per connection."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen backlog: a burst is answered (503), not SYN-dropped
    state: NodeState

    def __init__(
        self,
        address: tuple[str, int],
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict[socket.socket, float | None] = {}
        self._deadline_lock = threading.Lock()
        self._lingering: list[tuple[float, socket.socket]] = []  # rejected, closing
        super().__init__(address, _Handler)

    # -- admission --------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False) and not self._evict_for(request):
            self._reject(request)
            return
        with self._deadline_lock:
            self._deadlines[request] = time.monotonic() + self.request_timeout
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _evict_for(self, request: Any) -> bool:
        """All slots busy: cut the oldest connection still sending its request, so a
        flood of stalled clients cannot lock out a probe (a real probe sends its request
        in well under a millisecond).  True if a slot came free for `request`."""
        with self._deadline_lock:
            reading = [(d, r) for r, d in self._deadlines.items() if d is not None]
            if not reading:
                return False
            _, victim = min(reading, key=lambda item: item[0])
            self._deadlines[victim] = None
        self.state.metrics.health_evicted.inc()
        log.debug("health: all connections busy; closing the oldest unfinished request")
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)
        return self._slots.acquire(timeout=0.1)  # its thread ends at once

    def _forget(self, request: Any) -> None:
        with self._deadline_lock:
            if request not in self._deadlines:
                return
            del self._deadlines[request]
        self._slots.release()

    def _reject(self, request: socket.socket) -> None:
        """503 from the accepting thread without ever blocking on the client.

        The socket is half-closed and kept up to a second (drained, never read
        from by a thread): closing it while the client's request is still
        arriving would be a reset, which destroys the 503 before it is read.
        """
        self.state.metrics.health_rejected.inc()
        try:
            request.setblocking(False)
            request.send(_BUSY)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            self.shutdown_request(request)
            return
        if len(self._lingering) >= _MAX_LINGERING:
            self.shutdown_request(request)
            return
        self._lingering.append((time.monotonic() + _LINGER_S, request))

    def _drain_lingering(self, now: float) -> None:
        keep = []
        for close_at, request in self._lingering:
            done = now >= close_at
            try:
                while request.recv(65536):
                    pass
                done = True  # EOF: the client closed its side
            except BlockingIOError:
                pass  # nothing more yet
            except OSError:
                done = True
            if done:
                request.close()
            else:
                keep.append((close_at, request))
        self._lingering = keep

    # -- deadlines ----------------------------------------------------------------

    def set_deadline(self, request: socket.socket, deadline: float | None) -> None:
        with self._deadline_lock:
            if request in self._deadlines:
                self._deadlines[request] = deadline

    def service_actions(self) -> None:
        """Called by serve_forever every poll interval: cut off clients past their deadline."""
        super().service_actions()
        now = time.monotonic()
        if self._lingering:
            self._drain_lingering(now)
        with self._deadline_lock:
            late = [r for r, d in self._deadlines.items() if d is not None and d < now]
            for request in late:
                self._deadlines[request] = None  # once
        for request in late:
            self.state.metrics.health_timeouts.inc()
            log.debug("health: closing a connection that sent no complete request in time")
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)  # its handler's read returns at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE):
            log.debug("health client %s went away: %s", client_address, exc)
            return
        log.error(
            "health connection from %s failed: %s: %s", client_address, type(exc).__name__, exc
        )


class HealthServer:
    """``/healthz`` ``/readyz`` ``/metrics`` ``/status`` in a background thread."""

    def __init__(
        self,
        state: NodeState,
        host: str = "0.0.0.0",  # flanneld's --healthz-ip default (README: restrict it)
        port: int = 0,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError("--healthz-port must be in 0..65535", str(port))
        try:
            self._httpd = _Server((host, port), max_connections, request_timeout)
        except OSError as exc:
            raise NotAvailableError(
                f"cannot listen on {host}:{port} for health checks", exc.strerror or str(exc)
            ) from None
        self._httpd.state = state
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="health", kwargs={"poll_interval": 0.2}
        )
        self._thread.daemon = True

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health server listening", extra={"address": "{}:{}".format(*self.address)})
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
        for _, request in self._httpd._lingering:
            request.close()
        self._httpd._lingering = []
