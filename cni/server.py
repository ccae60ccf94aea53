"""CniServer: the daemon side of the fast path (unix socket, one thread per call).

The daemon has the plugin's code (and the rtnetlink layer under it) imported
and warm; a plugin process only forwards env + stdin here and prints the
reply.  Each connection is served in its own thread running exactly the
in-process code (``handler.handle``), with the *caller's* network namespace
as the host side: the server opens ``/proc/<peer pid>/ns/net`` from
SO_PEERCRED, so a runtime calling from a node namespace gets its bridge there
even if the daemon runs elsewhere.  Nothing is cached between requests
(netconf, subnet.env and the IPAM store are read each time); concurrency
safety comes from the same file locks and atomic nft batches the in-process
path relies on.

Only callers with our own UID (root) are served; the socket is mode 0600.
Run stand-alone for tests or without the daemon:
``python -m flannelish.cni.server --socket /run/flannel/flannelish.sock``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable

from .client import DECLINE, decode_request, encode_reply, peek_json, socket_path
from .handler import Response, handle

log = logging.getLogger("flannelish.cni.server")

MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_CONCURRENT = 32  # more parallel netlink work only adds contention
READ_TIMEOUT_S = 10.0


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        # A plugin sends its whole request at once; one that stalls must not hold a
        # thread (or a work slot) forever.  Declining makes it work in-process.
        sock.settimeout(READ_TIMEOUT_S)
        try:
            reply = self._serve(sock)
        except OSError as exc:
            reply = DECLINE + f"reading the request failed: {exc}".encode()
        if not reply.startswith(DECLINE):
            with self.server.count_lock:
                self.server.served += 1
        with contextlib.suppress(OSError):
            sock.sendall(reply)

    def _serve(self, sock: socket.socket) -> bytes:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.geteuid():
            return DECLINE + b"caller uid not allowed"
        data = bytearray()
        while len(data) <= MAX_REQUEST_BYTES:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_REQUEST_BYTES:  # never act on a truncated request
            return DECLINE + b"request too large"
        request = decode_request(bytes(data))
        if request is None:
            return DECLINE + b"unknown protocol or bad request"
        env, stdin = request
        doc = peek_json(stdin)
        if isinstance(doc, dict) and not _same_file(socket_path(doc), self.server.socket_path):
            # "Answers for this subnet": a netconf naming another daemon's socket (or
            # another subnet file) is not ours.  The caller then routes it itself.
            return DECLINE + b"not this daemon's network"
        try:
            host_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return DECLINE + b"cannot open the caller's netns"
        started = time.monotonic()
        try:
            with self.server.slots:
                response = handle(env, stdin, host_fd)
                if self.server.after is not None:  # e.g. network policy's endpoint registration
                    response = self.server.after(
                        env, stdin, response, lambda e: handle(e, stdin, host_fd)
                    )
        finally:
            os.close(host_fd)
        log.info(
            "CNI %s %s: exit %d in %.1f ms",
            env.get("CNI_COMMAND", "?"),
            env.get("CNI_CONTAINERID", "-"),
            response.exit_code,
            (time.monotonic() - started) * 1000,
        )
        return encode_reply(response.exit_code, response.stdout, response.stderr)


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    socket_path = ""
    after: Callable[..., Response] | None = None
    daemon_threads = True
    request_queue_size = 256
    slots = threading.BoundedSemaphore(MAX_CONCURRENT)
    served = 0
    count_lock = threading.Lock()


class CniServer:
    """Serve CNI requests on `socket_path` from a background thread."""

    def __init__(self, socket_path: str, after: Callable[..., Response] | None = None) -> None:
        """`after(env, stdin, response, rerun)` may replace a response (rerun: handle an env)."""
        self.socket_path = socket_path
        self.after = after
        self._server: _Server | None = None
        self._served = 0
        self._thread: threading.Thread | None = None

    @property
    def served(self) -> int:
        """Requests answered so far (for tests and metrics)."""
        return self._served + (self._server.served if self._server else 0)

    def start(self) -> None:
        # Import the kernel side now so the first request finds it warm.
        import flannelish.cni.bridge_ops  # noqa: F401  (imports cni.bridge too)

        os.makedirs(os.path.dirname(self.socket_path) or ".", mode=0o755, exist_ok=True)
        self._remove_stale()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            self._server = _Server(self.socket_path, _Handler)
        finally:
            os.umask(old_umask)
        self._server.slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._server.socket_path = self.socket_path
        self._server.after = self.after
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cni-server", daemon=True
        )
        self._thread.start()
        log.info("serving CNI requests", extra={"socket": self.socket_path})

    def _remove_stale(self) -> None:
        try:
            mode = os.lstat(self.socket_path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{self.socket_path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket_path)
        except OSError:
            os.unlink(self.socket_path)  # nobody listens: a leftover of a dead daemon
            return
        finally:
            probe.close()
        raise FileExistsError(f"another server is already listening on {self.socket_path}")

    def stop(self) -> None:
        if self._server is not None:
            self._served += self._server.served
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve flannelish-cni requests on a socket.")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = CniServer(args.socket)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"ready {args.socket}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
