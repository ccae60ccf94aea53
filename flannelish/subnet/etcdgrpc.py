"""etcd's gRPC API behind the JSON gateway transport's interface: the fallback transport.

etcd refuses a client certificate with a CommonName on its JSON gateway but
accepts it over gRPC, so EtcdStore uses this transport only for such a
certificate (docs/dependencies.md §1).  It offers what etcdhttp.Transport
offers -- ``request(endpoint, path, body, headers, timeout)`` with the
gateway's JSON bodies and answers, ``stream()`` for the watch, ``close()`` --
so failover, auth, paging and error handling stay in EtcdStore and
WatchStream.  Bodies go through protobuf's JSON mapping, which is the
gateway's own encoding (base64 bytes, int64 as strings, enum names, zero
values left out).  Failures come out as etcdhttp's TransportError,
GatewayError and TooLarge.

Importing this module imports grpc and etcd-sdk-python's generated stubs
(``pyetcd.etcdrpc``); nothing else does.  The daemon forks (nft, the
WireGuard tools) while a channel is open and gRPC's fork handlers would only
log warnings, so GRPC_ENABLE_FORK_SUPPORT is false unless the environment
says otherwise (docs/dependencies.md §2).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# gRPC's core logs each failed TLS handshake to stderr; our errors already say why.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from google.protobuf import json_format
from pyetcd.etcdrpc import rpc_pb2

from flannelish.subnet.etcdhttp import GatewayError, TooLarge, TransportError
from flannelish.subnet.etcdoptions import Endpoint, EtcdOptions

# Reconnect quickly after an etcd restart (gRPC's default backoff grows to
# 120 s); keepalive pings notice a silently dead member on an open watch.
# ping_timeout: gRPC skips keepalive pings while another ping (its BDP probe)
# is unanswered and waits 60 s for that one by default, so a frozen (SIGSTOPped,
# hung) member kept the watch for over a minute; now it is dropped within 15 s.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
]

# The gateway's paths and the gRPC methods behind them.
_METHODS: dict[str, tuple[str, type[Any], type[Any]]] = {
    "/v3/kv/range": ("KV/Range", rpc_pb2.RangeRequest, rpc_pb2.RangeResponse),
    "/v3/kv/put": ("KV/Put", rpc_pb2.PutRequest, rpc_pb2.PutResponse),
    "/v3/kv/txn": ("KV/Txn", rpc_pb2.TxnRequest, rpc_pb2.TxnResponse),
    "/v3/kv/deleterange": (
        "KV/DeleteRange",
        rpc_pb2.DeleteRangeRequest,
        rpc_pb2.DeleteRangeResponse,
    ),
    "/v3/kv/compaction": ("KV/Compact", rpc_pb2.CompactionRequest, rpc_pb2.CompactionResponse),
    "/v3/lease/grant": ("Lease/LeaseGrant", rpc_pb2.LeaseGrantRequest, rpc_pb2.LeaseGrantResponse),
    "/v3/lease/revoke": (
        "Lease/LeaseRevoke",
        rpc_pb2.LeaseRevokeRequest,
        rpc_pb2.LeaseRevokeResponse,
    ),
    "/v3/lease/timetolive": (
        "Lease/LeaseTimeToLive",
        rpc_pb2.LeaseTimeToLiveRequest,
        rpc_pb2.LeaseTimeToLiveResponse,
    ),
    "/v3/auth/authenticate": (
        "Auth/Authenticate",
        rpc_pb2.AuthenticateRequest,
        rpc_pb2.AuthenticateResponse,
    ),
    "/v3/maintenance/status": ("Maintenance/Status", rpc_pb2.StatusRequest, rpc_pb2.StatusResponse),
}

_VERIFY_FAILED = re.compile(r"certificate[_ ]verify[_ ]failed:?([^;:\n]*)", re.IGNORECASE)
_SOCKET_ERRORS = re.compile(
    r"connection refused|connection reset|no route to host|network is unreachable|"
    r"socket closed|connection timed out|name resolution|dns resolution",
    re.IGNORECASE,
)


def _read(path: str | None) -> bytes | None:
    # EtcdStore checked every file with etcdhttp.tls_context before choosing gRPC.
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _metadata(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The gateway's headers as gRPC metadata: the auth token and Grpc-Metadata-* ones."""
    out = []
    for name, value in headers.items():
        low = name.lower()
        if low == "authorization":
            out.append(("token", value))
        elif low.startswith("grpc-metadata-"):
            out.append((low.removeprefix("grpc-metadata-"), value))
    return tuple(out)


def _answer(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def rpc_error(exc: grpc.RpcError) -> Exception:
    """TransportError (no usable answer), TooLarge or GatewayError (etcd's own error)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = str(exc.details() if callable(getattr(exc, "details", None)) else exc) or ""
    low = details.lower()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in low:
        return TooLarge(details.splitlines()[0][:200])
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TransportError("connection timed out")
    if code == grpc.StatusCode.CANCELLED:
        return TransportError("the call was cancelled")
    if code == grpc.StatusCode.UNAVAILABLE and "etcdserver:" not in low:
        verify = _VERIFY_FAILED.search(details)
        if verify:  # the same cause as the gateway transport's
            reason = verify.group(1).strip() or "the chain did not verify"
            return TransportError(f"certificate verify failed: {reason[:120]}", tls=True)
        if "wrong_version_number" in low:
            return TransportError("the server does not speak TLS (is it plain http://?)", tls=True)
        if "handshake" in low or "ssl" in low:
            return TransportError(
                "TLS handshake failed: the server closed the connection (is it plain http://?)",
                tls=True,
            )
        match = _SOCKET_ERRORS.search(details)
        return TransportError(match.group(0).lower() if match else details[:200] or "unavailable")
    return GatewayError(code.value[0], details[:500])


class GrpcTransport:
    """Requests to etcd members over one gRPC channel per member (thread-safe)."""

    def __init__(self, options: EtcdOptions, max_body: int) -> None:
        self.max_body = max_body
        self._options = [*_CHANNEL_OPTIONS, ("grpc.max_receive_message_length", max_body)]
        self._creds: grpc.ChannelCredentials | None = None
        if any(ep.secure for ep in options.parsed_endpoints):
            self._creds = grpc.ssl_channel_credentials(
                root_certificates=_read(options.cafile),
                private_key=_read(options.keyfile or options.certfile),
                certificate_chain=_read(options.certfile),
            )
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def _channel(self, ep: Endpoint) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(str(ep))
            if channel is None:
                if ep.secure:
                    assert self._creds is not None
                    channel = grpc.secure_channel(ep.netloc, self._creds, self._options)
                else:
                    channel = grpc.insecure_channel(ep.netloc, self._options)
                self._channels[str(ep)] = channel
            return channel

    def request(
        self,
        ep: Endpoint,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: float,
        fresh: bool = False,
    ) -> dict[str, Any]:
        """Send `body` (the gateway's JSON) to the method behind `path`; its answer as JSON.

        ``fresh`` is moot: HTTP/2 multiplexes, so a probe queues behind nothing.
        """
        method, request_type, response_type = _METHODS[path]
        call = self._channel(ep).unary_unary(
            f"/etcdserverpb.{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        request = json_format.ParseDict(body, request_type())
        try:
            return _answer(call(request, timeout=timeout, metadata=_metadata(headers)))
        except grpc.RpcError as exc:
            raise rpc_error(exc) from None

    def stream(
        self, ep: Endpoint, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float
    ) -> GrpcStream:
        """Open the watch and return it once etcd's first answer arrived (or failed)."""
        if path != "/v3/watch":
            raise ValueError(f"no gRPC stream for {path}")
        call = self._channel(ep).stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=rpc_pb2.WatchRequest.SerializeToString,
            response_deserializer=rpc_pb2.WatchResponse.FromString,
        )
        stream = GrpcStream(call, json_format.ParseDict(body, rpc_pb2.WatchRequest()), headers)
        stream.wait_first(timeout)
        return stream

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
        for channel in channels:
            with contextlib.suppress(Exception):
                channel.close()


class GrpcStream:
    """A gRPC watch read by a thread of its own; the interface of etcdhttp.Stream.

    Messages come out as the gateway streams them: ``{"result": WatchResponse}``.
    """

    def __init__(self, call: Any, request: Any, headers: dict[str, str]) -> None:
        self._closed = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._ended: Exception | None = None
        self._first: Any = None

        def requests() -> Iterator[Any]:
            yield request
            self._closed.wait()  # keep the send side open until close()

        self._call = call(requests(), metadata=_metadata(headers))
        threading.Thread(target=self._read, name="etcd-grpc-watch", daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._queue.put({"result": _answer(response)})
            self._queue.put(TransportError("the server ended the stream"))
        except grpc.RpcError as exc:
            self._queue.put(rpc_error(exc))
        except Exception as exc:
            self._queue.put(TransportError(f"watch stream failed: {type(exc).__name__}"))

    def wait_first(self, timeout: float) -> None:
        """Raise the stream's failure unless a message arrives within `timeout` seconds."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise TransportError("connection timed out") from None
        if isinstance(item, Exception):
            self.close()
            raise item
        self._first = item

    def next_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None if none arrived within `timeout` seconds."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._ended is not None:
            raise self._ended
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            self._ended = item
            raise item
        return item

    def close(self) -> None:
        """Ends the stream; safe from another thread while next_message() waits."""
        self._closed.set()
        with contextlib.suppress(Exception):
            self._call.cancel()
