"""HTTP/1.1 exchanges with one etcd member's v3 JSON gateway (standard library only).

etcd serves its gRPC API as JSON over HTTP on the same client port
(docs/dependencies.md §1).  A request is one POST on a keep-alive connection
(one per member per thread); a watch is a streamed answer on a socket of its
own, read as newline-separated JSON messages.  Nothing from the member is
read unbounded: an answer body, a streamed message and the response head are
all capped, and a request has a deadline.  Failures come out as
TransportError (no usable answer: refused, reset, timed out, TLS),
GatewayError (etcd answered with an error), TooLarge or MalformedAnswer.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
import weakref
from typing import Any

from flannelish.errors import ConfigError
from flannelish.subnet.etcdjson import MalformedAnswer, parse_object
from flannelish.subnet.etcdoptions import Endpoint

_READ_PIECE = 64 * 1024
_MAX_HEAD = 64 * 1024
_HTTPS_ONLY = b"client sent an http request to an https server"
_CN_REFUSED = b"commonname of client sending a request against gateway"
_UNAUTHENTICATED = 16


class TransportError(Exception):
    """No usable answer from the member; ``tls``: the TLS handshake itself failed."""

    def __init__(self, cause: str, tls: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.tls = tls


class GatewayError(Exception):
    """etcd answered with an error: its gRPC status code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TooLarge(Exception):
    """An answer, or one streamed message, over the receive limit."""


def tls_context(cafile: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
    """The client TLS context of the --etcd-cafile/--etcd-certfile/--etcd-keyfile flags."""
    for path, flag in (
        (cafile, "--etcd-cafile"),
        (certfile, "--etcd-certfile"),
        (keyfile, "--etcd-keyfile"),
    ):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{flag}: cannot read {path!r}", exc.strerror) from None
    context = ssl.create_default_context(cafile=None)
    try:
        if cafile:
            context.load_verify_locations(cafile=cafile)
        if certfile:
            context.load_cert_chain(certfile, keyfile or None)
    except (ssl.SSLError, ValueError) as exc:
        which = "--etcd-certfile/--etcd-keyfile" if certfile else "--etcd-cafile"
        raise ConfigError(f"{which}: not a usable PEM certificate or key", str(exc)) from None
    return context


def error_from(msg: dict[str, Any]) -> GatewayError:
    """The error of an answer body: ``{"code", "message"}`` or, streamed, ``{"error": {...}}``."""
    inner = msg.get("error")
    if isinstance(inner, dict):
        msg = inner
    code = msg.get("code", msg.get("grpc_code"))
    message = msg.get("message", msg.get("error"))
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str):
        raise MalformedAnswer("an error answer without a code and message")
    return GatewayError(code, message[:500])


def _status_answer(status: int, body: bytes) -> dict[str, Any]:
    """The JSON object of a 200 answer; the error of any other one."""
    if status == 200:
        return parse_object(body)
    if _HTTPS_ONLY in body[:200].lower():
        raise TransportError("the server speaks TLS; use an https:// endpoint", tls=True)
    if _CN_REFUSED in body[:200].lower():
        # etcd >= 3.4.10 refuses a client certificate with a CommonName on /v3 paths
        # (its gateway cannot map the CN to an etcd user): docs/dependencies.md §1.
        raise GatewayError(_UNAUTHENTICATED, "client certificate with a CommonName refused")
    try:
        msg = parse_object(body)
    except MalformedAnswer:
        raise MalformedAnswer(f"HTTP {status} with no etcd error in its body") from None
    raise error_from(msg)


def transport_error(exc: BaseException, handshake: bool = False) -> TransportError:
    """A one-line cause for a socket, TLS or HTTP framing failure."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransportError(f"certificate verify failed: {exc.verify_message}", tls=True)
    if isinstance(exc, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(exc):
        return TransportError("the server does not speak TLS (is it plain http://?)", tls=True)
    if handshake and isinstance(exc, ssl.SSLError | ConnectionResetError | EOFError):
        return TransportError(
            "TLS handshake failed: the server closed the connection (is it plain http://?)",
            tls=True,
        )
    if isinstance(exc, ssl.SSLError):
        return TransportError(f"TLS error: {exc.reason or exc}", tls=True)
    if isinstance(exc, TimeoutError):
        return TransportError("connection timed out")
    if isinstance(exc, http.client.RemoteDisconnected):
        return TransportError("connection closed by the server")
    if isinstance(exc, http.client.HTTPException):
        return TransportError(f"bad HTTP answer: {type(exc).__name__}")
    if isinstance(exc, OSError):
        if isinstance(exc, socket.gaierror):
            return TransportError(f"name resolution failed: {exc.strerror}")
        return TransportError((exc.strerror or type(exc).__name__).lower())
    return TransportError(type(exc).__name__)


class Transport:
    """Requests to etcd members over per-thread keep-alive connections."""

    def __init__(self, context: ssl.SSLContext | None, max_body: int) -> None:
        self.context = context
        self.max_body = max_body
        self._local = threading.local()
        self._all: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._lock = threading.Lock()

    def request(
        self,
        ep: Endpoint,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: float,
        fresh: bool = False,
    ) -> dict[str, Any]:
        """POST `body` to `path` and return the answer's JSON object.

        ``fresh``: on a new connection, closed afterwards (a liveness probe must
        not queue behind anything).  A kept connection the server closed while
        idle is replaced once, transparently.
        """
        deadline = time.monotonic() + timeout
        data = json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **headers}
        # grpc-gateway turns this into the request's deadline inside etcd.
        all_headers["Grpc-Timeout"] = f"{max(1, int(timeout * 1000))}m"
        for attempt in range(2):
            conn, reused = (self._new(ep, timeout), False) if fresh else self._kept(ep, timeout)
            try:
                if conn.sock is None:
                    try:
                        conn.connect()
                    except Exception as exc:
                        raise transport_error(exc, handshake=ep.secure) from None
                conn.request("POST", path, data, all_headers)
                resp = conn.getresponse()
                status, answer = resp.status, self._read(conn, resp, deadline)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop(ep, conn)
                if reused and attempt == 0:
                    continue
                raise transport_error(exc) from None
            except (TooLarge, TransportError):
                self._drop(ep, conn)
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._drop(ep, conn)
                raise transport_error(exc) from None
            if fresh or resp.will_close:
                self._drop(ep, conn)
            return _status_answer(status, answer)
        raise AssertionError("unreachable")

    def _read(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, deadline: float
    ) -> bytes:
        """The whole body, up to the cap and before the deadline."""
        if resp.length is not None and resp.length > self.max_body:
            raise TooLarge(f"{resp.length} bytes, over the {self.max_body}-byte limit")
        body = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError("connection timed out")
            if conn.sock is not None:
                conn.sock.settimeout(left)
            if resp.length == 0:  # read1() does not mark a Content-Length body done
                resp.close()
            if resp.isclosed():
                return bytes(body)
            piece = resp.read1(_READ_PIECE)
            if not piece:
                resp.close()
                return bytes(body)
            body += piece
            if len(body) > self.max_body:
                raise TooLarge(f"over the {self.max_body}-byte limit")

    def _new(self, ep: Endpoint, timeout: float) -> http.client.HTTPConnection:
        if ep.secure:
            return http.client.HTTPSConnection(
                ep.host, ep.port, timeout=timeout, context=self.context
            )
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _kept(self, ep: Endpoint, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(str(ep))
        if conn is not None and conn.sock is not None:
            conn.timeout = timeout
            conn.sock.settimeout(timeout)
            return conn, True
        conn = conns[str(ep)] = self._new(ep, timeout)
        with self._lock:
            self._all.add(conn)
        return conn, False

    def _drop(self, ep: Endpoint, conn: http.client.HTTPConnection) -> None:
        with contextlib.suppress(Exception):
            conn.close()
        conns = self._local.__dict__.get("conns", {})
        if conns.get(str(ep)) is conn:
            del conns[str(ep)]

    def close(self) -> None:
        with self._lock:
            conns = list(self._all)
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def stream(
        self, ep: Endpoint, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float
    ) -> Stream:
        """POST `body` and return the streamed answer, once its head said 200."""
        deadline = time.monotonic() + timeout
        data = json.dumps(body).encode()
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
        except Exception as exc:
            raise transport_error(exc) from None
        try:
            if ep.secure:
                assert self.context is not None
                try:
                    sock = self.context.wrap_socket(sock, server_hostname=ep.host)
                except Exception as exc:
                    raise transport_error(exc, handshake=True) from None
            lines = [
                f"POST {path} HTTP/1.1",
                f"Host: {ep.netloc}",
                "Content-Type: application/json",
                f"Content-Length: {len(data)}",
                *(f"{k}: {v}" for k, v in headers.items()),
            ]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
            return Stream.read_head(sock, self.max_body, deadline)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                sock.close()
            if isinstance(exc, TransportError | GatewayError | TooLarge | MalformedAnswer):
                raise
            if isinstance(exc, Exception):
                raise transport_error(exc) from None
            raise


_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")


class _Chunked:
    """Incremental decoding of a chunked HTTP/1.1 body."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0
        self._state = "size"
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while not self.done:
            if self._state == "size":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 1024:
                        raise MalformedAnswer("a chunk header over 1 KiB")
                    break
                size = bytes(self._buf[:end]).split(b";", 1)[0].strip()
                del self._buf[: end + 2]
                if not _CHUNK_SIZE.fullmatch(size):
                    raise MalformedAnswer("a bad chunk size")
                self._left = int(size, 16)
                self._state = "data" if self._left else "end"
                self.done = not self._left  # trailers after the last chunk are ignored
            elif self._state == "data":
                take = min(self._left, len(self._buf))
                out += self._buf[:take]
                del self._buf[:take]
                self._left -= take
                if self._left:
                    break
                self._state = "crlf"
            else:  # the CRLF after a chunk's data
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise MalformedAnswer("a chunk not followed by CRLF")
                del self._buf[:2]
                self._state = "size"
        return bytes(out)


class Stream:
    """A streamed answer: newline-separated JSON objects, each at most `max_message` bytes."""

    def __init__(self, sock: socket.socket, max_message: int, chunked: bool, rest: bytes) -> None:
        self._sock = sock
        self.max_message = max_message
        self._chunked = _Chunked() if chunked else None
        self._data = bytearray()
        self._eof = False
        self._feed(rest)

    @classmethod
    def read_head(cls, sock: socket.socket, max_message: int, deadline: float) -> Stream:
        head = bytearray()
        while b"\r\n\r\n" not in head:
            if len(head) > _MAX_HEAD:
                raise MalformedAnswer("an HTTP head over 64 KiB")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError("connection timed out")
            sock.settimeout(left)
            piece = sock.recv(_READ_PIECE)
            if not piece:
                raise TransportError("connection closed by the server")
            head += piece
        end = head.index(b"\r\n\r\n")
        lines = bytes(head[:end]).decode("latin-1").split("\r\n")
        rest = bytes(head[end + 4 :])
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise MalformedAnswer(f"not an HTTP answer: {lines[0][:60]!r}")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        stream = cls(sock, max_message, "chunked" in fields.get("transfer-encoding", ""), rest)
        if int(parts[1]) != 200:
            body = stream.read_all(deadline)
            _status_answer(int(parts[1]), body)
            raise MalformedAnswer(f"HTTP {parts[1]} with a body that is no error")
        return stream

    def _feed(self, data: bytes) -> None:
        self._data += self._chunked.feed(data) if self._chunked else data

    def _recv(self, timeout: float) -> bool:
        """Read what arrives within `timeout`; False on a timeout."""
        self._sock.settimeout(max(timeout, 0.001))
        try:
            piece = self._sock.recv(_READ_PIECE)
        except TimeoutError:
            return False
        except OSError as exc:
            raise transport_error(exc) from None
        if not piece:
            self._eof = True
        self._feed(piece)
        return True

    def _ended(self) -> bool:
        return self._eof or (self._chunked is not None and self._chunked.done)

    def read_all(self, deadline: float) -> bytes:
        """The rest of a (short, error) body, up to the cap and before the deadline."""
        while not self._ended():
            if len(self._data) > self.max_message:
                raise TooLarge(f"over the {self.max_message}-byte limit")
            left = deadline - time.monotonic()
            if left <= 0 or not self._recv(left):
                raise TransportError("connection timed out")
        return bytes(self._data)

    def next_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None if none arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            end = self._data.find(b"\n")
            if end >= 0:
                line = bytes(self._data[:end])
                del self._data[: end + 1]
                if line.strip():
                    return parse_object(line)
                continue
            if len(self._data) > self.max_message:
                raise TooLarge(f"a message over the {self.max_message}-byte limit")
            if self._ended():
                raise TransportError("the server ended the stream")
            left = deadline - time.monotonic()
            if left <= 0 or not self._recv(left):
                return None

    def close(self) -> None:
        """Ends the stream; safe from another thread while next_message() waits."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
