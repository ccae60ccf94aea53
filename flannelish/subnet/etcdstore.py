"""The etcd client: requests to etcd's v3 JSON gateway with failover and readable errors.

Connection options live in flannelish.subnet.etcdoptions, watch streams in
flannelish.subnet.etcdwatch, the HTTP transport in flannelish.subnet.etcdhttp
and the decoding of answers in flannelish.subnet.etcdjson; the public names are
re-exported here.  Standard library only: no gRPC (docs/dependencies.md §1).
What this module adds to single requests:

* failover: a request that fails on one member is retried on the next one,
  for up to ``retry_window`` seconds;
* a failed member is tried again after ``retry_failed_after`` (1 s);
* auth and TLS failures become EtcdAuthError/EtcdError with one readable
  cause (etcderrors);
* simple auth tokens are per member and expire, so an "invalid auth token"
  answer triggers one re-authentication and a retry;
* listing a prefix reads it in pages at one revision (the receive limit
  would otherwise make a few large values fail the whole listing, exit 4).

The transport is chosen once per store: the gateway's (etcdhttp), or gRPC
(etcdgrpc, imported only then) for a client certificate with a CommonName,
which etcd's gateway refuses (docs/dependencies.md §1).  Both take the
gateway's JSON bodies and answer with its JSON, so everything above is shared.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from flannelish.errors import EtcdAuthError, EtcdError
from flannelish.subnet.etcdcert import has_common_name
from flannelish.subnet.etcderrors import NoMemberAvailable, classify
from flannelish.subnet.etcdhttp import GatewayError, TooLarge, Transport, tls_context
from flannelish.subnet.etcdjson import (
    KeyValue,
    MalformedAnswer,
    b64,
    flag,
    int64,
    items,
    key_value,
    obj,
    prefix_range_end,
    raw,
    revision,
    text,
)
from flannelish.subnet.etcdoptions import (
    DEFAULT_ENDPOINTS,
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    Endpoint,
    EtcdOptions,
    normalize_prefix,
    parse_endpoint,
)
from flannelish.subnet.etcdwatch import (
    ClusterReset,
    HistoryCompacted,
    WatchEvent,
    WatchResponseTooLarge,
    WatchStream,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENDPOINTS",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "ClusterReset",
    "Endpoint",
    "EtcdOptions",
    "EtcdStore",
    "HistoryCompacted",
    "KeyValue",
    "WatchEvent",
    "WatchResponseTooLarge",
    "WatchStream",
    "normalize_prefix",
    "parse_endpoint",
]

T = TypeVar("T")

# Listing reads this many keys per request, fewer after a response was too large.
# Two pages for a 5000-node cluster: each page is a round trip and a seek in
# etcd (500 per page cost a 5000-lease listing ~60 ms more, at ~1 MB less peak).
PAGE_KEYS = 2500
# The cap on one answer body (or one watch message) we read.  JSON with base64
# values is about 4/3 of gRPC's size for the same answer; 16 MiB still bounds
# the memory one answer can take, whatever a member sends.
MAX_RECEIVE_BYTES = 16 * 1024 * 1024
_MAX_LIST_RESTARTS = 5
# An auth token goes into a header: printable ASCII only, whatever etcd sent.
_TOKEN = re.compile(r"[!-~]{1,4096}")


class MessageStream(Protocol):
    """A streamed answer (the watch): etcdhttp.Stream or etcdgrpc.GrpcStream."""

    def next_message(self, timeout: float) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class EtcdTransport(Protocol):
    """Requests to one member: etcdhttp.Transport or etcdgrpc.GrpcTransport."""

    def request(
        self,
        ep: Endpoint,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: float,
        fresh: bool = False,
    ) -> dict[str, Any]: ...

    def stream(
        self, ep: Endpoint, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float
    ) -> MessageStream: ...

    def close(self) -> None: ...


class _Member:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.failed_at: float | None = None


class _Client:
    """What EtcdStore.call hands its function: requests to the member of this attempt."""

    def __init__(self, store: EtcdStore, member: _Member) -> None:
        self._store = store
        self._member = member

    @property
    def endpoint(self) -> Endpoint:
        return self._member.endpoint

    def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        store = self._store
        return store._transport.request(
            self.endpoint, path, body, store._auth_headers(), store.timeout
        )

    def stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> MessageStream:
        store = self._store
        return store._transport.stream(
            self.endpoint, path, body, {**store._auth_headers(), **headers}, store.timeout
        )

    def probe(self, timeout: float) -> None:
        """Raise TransportError unless the member answers (anything) within `timeout`."""
        with contextlib.suppress(GatewayError, MalformedAnswer, TooLarge):
            self._store._transport.request(
                self.endpoint, "/v3/maintenance/status", {}, {}, timeout, fresh=True
            )

    def fail(self) -> None:
        self._store._mark_failed(self._member)


class EtcdStore:
    """A connection to an etcd cluster with failover, retries and readable errors.

    Every method either succeeds or raises EtcdError / EtcdAuthError; a request
    that fails on one member is retried on the others before giving up.
    Thread-safe: each thread keeps its own connection to each member.
    """

    def __init__(
        self,
        options: EtcdOptions,
        timeout: float = 5.0,
        retry_failed_after: float = 1.0,
        retry_window: float = 2.0,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
    ):
        self.options = options
        self.timeout = timeout
        self.retry_window = retry_window
        self.retry_failed_after = retry_failed_after
        self._endpoints = options.parsed_endpoints
        context = None
        if any(ep.secure for ep in self._endpoints):
            context = tls_context(options.cafile, options.certfile, options.keyfile)
        self._transport = _transport(options, context, max_receive_bytes)
        self._members = [_Member(ep) for ep in self._endpoints]
        self._current = 0
        self._lock = threading.Lock()
        # Authenticate lazily inside call(), so its errors get the same treatment.
        self._token: str | None = None
        self._token_needed = bool(options.username)
        self._auth_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------

    @property
    def current_endpoint(self) -> str:
        return str(self._members[self._current].endpoint) if self._members else "?"

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pick(self) -> _Member:
        """The member in use if it has not failed recently, else the first one that has not."""
        with self._lock:
            now = time.monotonic()
            usable = [
                i
                for i, m in enumerate(self._members)
                if m.failed_at is None or now - m.failed_at >= self.retry_failed_after
            ]
            if not usable:
                raise NoMemberAvailable()
            if self._current not in usable:
                self._current = usable[0]
            return self._members[self._current]

    def _mark_failed(self, member: _Member) -> None:
        with self._lock:
            member.failed_at = time.monotonic()

    def _auth_headers(self) -> dict[str, str]:
        token = self._token
        return {"Authorization": token} if token else {}

    def call(self, what: str, fn: Callable[[_Client], T]) -> T:
        """Run ``fn(client)`` against one member, failing over; translate every error.

        Connection failures are retried on the other members, and on all of them
        again once they may be retried (after ``retry_failed_after``), for up to
        ``retry_window`` seconds: long enough to ride out a leader election.
        Every member gets at least one attempt, even past the window: a hung
        member's timeout alone outlasts the window, and the live ones must not
        go untried.
        """
        deadline = time.monotonic() + self.retry_window
        reauthenticated = False
        cause = last_cause = "no attempt made"
        attempt = 0
        while attempt < len(self._endpoints) or time.monotonic() < deadline:
            attempt += 1
            member: _Member | None = None
            try:
                member = self._pick()
                if self._token_needed:
                    self._authenticate(member)
                return fn(_Client(self, member))
            except EtcdError:
                raise
            except Exception as exc:
                kind, cause = classify(exc, self.options)
            where = str(member.endpoint) if member else self.current_endpoint
            if kind == "token" and not reauthenticated:
                # Simple tokens are per member and expire after 5 idle minutes.
                self._token_needed = reauthenticated = True
                continue
            if kind in ("auth", "token"):
                raise EtcdAuthError(f"etcd refused {what}", cause)
            if kind == "tls":
                raise EtcdAuthError(f"TLS handshake with etcd at {where} failed", cause)
            if kind == "other":
                raise EtcdError(f"etcd {what} failed", f"{cause} (at {where})")
            if kind == "unavailable" and member is not None:  # worth reporting
                self._mark_failed(member)
                last_cause = f"{cause} (at {where})"
            time.sleep(min(0.05 * 2 ** (attempt - 1), 0.5))
        raise EtcdError(
            f"etcd is unreachable at {','.join(self.options.endpoints)} ({what})", last_cause
        )

    def _authenticate(self, member: _Member) -> None:
        with self._auth_lock:
            if not self._token_needed:
                return
            try:
                answer = self._transport.request(
                    member.endpoint,
                    "/v3/auth/authenticate",
                    {"name": self.options.username, "password": self.options.password},
                    {},
                    self.timeout,
                )
            except GatewayError as exc:
                if "authentication is not enabled" in exc.message:
                    log.warning("etcd has authentication disabled; --etcd-username is ignored")
                    self._token = None
                    self._token_needed = False
                    return
                raise
            token = text(answer, "token")
            if not _TOKEN.fullmatch(token):
                raise MalformedAnswer("the auth token is empty or not printable ASCII")
            self._token = token
            self._token_needed = False

    # -- key-value operations --------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        """The key, or None; a value over the receive limit comes back ``oversized``."""
        page = self.call(f"get {key}", _range_op(key.encode(), b"", 1, 0))
        if isinstance(page, str):
            page = self.call(f"get {key}", _range_op(key.encode(), b"", 1, 0, keys_only=True))
        if isinstance(page, str):
            raise EtcdError(f"etcd get {key} failed", "its key alone is too large")
        return page.kvs[0] if page.kvs else None

    def get_prefix(self, prefix: str, page_keys: int = PAGE_KEYS) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the revision of that snapshot.

        Read in pages of at most `page_keys` keys, all at the revision of the
        first page, each continuing after the last key of the one before.  A
        page over the receive limit is read again with a quarter of the keys;
        a single value over the limit is returned with ``oversized=True`` and
        no value.  A compaction of that revision mid-listing starts it over.
        """
        end = prefix_range_end(prefix.encode())
        for _ in range(_MAX_LIST_RESTARTS):
            result = self._list_pages(prefix, prefix.encode(), end, max(1, page_keys))
            if result is not None:
                return result
            log.info("listing %s: its revision was compacted meanwhile; listing again", prefix)
        raise EtcdError(f"etcd list {prefix} failed", "compacted during every attempt")

    def get_prefix_since(self, prefix: str, min_mod_revision: int) -> list[KeyValue] | None:
        """The keys under `prefix` last written at `min_mod_revision` or later.

        etcd filters server-side, so the answer holds only those keys, not the
        whole prefix.  It is one unpaged request (a filtered page may come back
        empty while more keys follow), so it returns None where the answer is
        over the receive limit; the caller then lists the whole prefix.
        """
        end = prefix_range_end(prefix.encode())
        op = _range_op(prefix.encode(), end, 0, 0, min_mod_revision=min_mod_revision)
        page = self.call(f"list {prefix} since revision {min_mod_revision}", op)
        return None if isinstance(page, str) else page.kvs

    def _list_pages(
        self, prefix: str, start: bytes, end: bytes, page_keys: int
    ) -> tuple[list[KeyValue], int] | None:
        """One paged listing; None if its revision was compacted meanwhile."""
        out: list[KeyValue] = []
        at = 0
        limit = page_keys
        while True:
            page = self.call(f"list {prefix}", _range_op(start, end, limit, at))
            if page == "compacted":
                return None
            if page == "too large":
                if limit > 1:
                    limit = max(1, limit // 4)
                    continue
                # One value alone is over the limit: its key and metadata still count.
                page = self.call(f"list {prefix}", _range_op(start, end, 1, at, True))
                if page == "compacted":
                    return None
                if isinstance(page, str):
                    raise EtcdError(f"etcd list {prefix} failed", "a key alone is too large")
            else:
                limit = min(page_keys, limit * 2)
            assert isinstance(page, _Page)
            at = at or page.revision
            out.extend(page.kvs)
            if not page.more or not page.kvs:
                return out, at
            start = page.last_key + b"\0"  # the raw key: names may not be UTF-8

    def put(self, key: str, value: bytes, lease_id: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key.encode()), "value": b64(value)}
        if lease_id:
            body["lease"] = lease_id
        return self.call(f"put {key}", lambda c: revision(c.request("/v3/kv/put", body)))

    def put_if(
        self, key: str, value: bytes, mod_revision: int, lease_id: int = 0
    ) -> KeyValue | None:
        """Put only if the key's mod revision is `mod_revision` (0: only if absent).

        Returns the key as written, or None if the comparison failed.
        """
        k = b64(key.encode())
        put: dict[str, Any] = {"key": k, "value": b64(value)}
        if lease_id:
            put["lease"] = lease_id
        txn = {
            "compare": [_compare(k, mod_revision)],
            "success": [{"request_put": put}, {"request_range": {"key": k}}],
            "failure": [],
        }

        def op(c: _Client) -> KeyValue | None:
            answer = c.request("/v3/kv/txn", txn)
            if not flag(answer, "succeeded"):
                return None
            responses = items(answer, "responses")
            kvs = items(obj(responses[-1], "response_range"), "kvs") if len(responses) == 2 else []
            if not kvs:
                raise MalformedAnswer("a successful write without the key read back")
            return key_value(kvs[0])

        return self.call(f"write {key}", op)

    def delete(self, key: str, mod_revision: int = 0) -> bool:
        """Delete `key` (only at `mod_revision` if given); True if it was deleted."""
        k = b64(key.encode())

        def op(c: _Client) -> bool:
            if not mod_revision:
                return int64(c.request("/v3/kv/deleterange", {"key": k}), "deleted") > 0
            txn = {
                "compare": [_compare(k, mod_revision)],
                "success": [{"request_delete_range": {"key": k}}],
                "failure": [],
            }
            return flag(c.request("/v3/kv/txn", txn), "succeeded")

        return self.call(f"delete {key}", op)

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new etcd lease: (id, granted TTL in seconds)."""

        def op(c: _Client) -> tuple[int, int]:
            answer = c.request("/v3/lease/grant", {"TTL": ttl})
            if text(answer, "error"):
                raise GatewayError(2, text(answer, "error")[:200])
            lease_id = int64(answer, "ID")
            if lease_id <= 0:
                raise MalformedAnswer("a granted lease without an ID")
            return lease_id, int64(answer, "TTL")

        return self.call(f"grant a {ttl}s lease", op)

    def revoke(self, lease_id: int) -> None:
        def op(c: _Client) -> None:
            try:
                c.request("/v3/lease/revoke", {"ID": lease_id})
            except GatewayError as exc:
                if "lease not found" not in exc.message:
                    raise

        self.call(f"revoke lease {lease_id:x}", op)

    def ttl(self, lease_id: int) -> int:
        """Seconds left on a lease; -1 if it no longer exists."""
        return self.call(
            f"look up lease {lease_id:x}",
            lambda c: int64(c.request("/v3/lease/timetolive", {"ID": lease_id}), "TTL"),
        )

    def compact(self, revision: int) -> None:
        self.call(
            f"compact to {revision}",
            lambda c: c.request("/v3/kv/compaction", {"revision": revision}),
        )

    def watch(self, prefix: str, start_revision: int) -> WatchStream:
        """Open a watch on every key under `prefix`, replaying from `start_revision`."""
        return self.call(f"watch {prefix}", lambda c: WatchStream(self, c, prefix, start_revision))


def _transport(options: EtcdOptions, context: Any, max_body: int) -> EtcdTransport:
    """The gateway's transport, or gRPC for a client certificate with a CommonName."""
    if context is None or not options.certfile or not has_common_name(options.certfile):
        return Transport(context, max_body)
    log.info(
        "--etcd-certfile %s has a CommonName, which etcd's JSON gateway refuses: "
        "talking to etcd over gRPC instead (docs/dependencies.md §1)",
        options.certfile,
    )
    from flannelish.subnet.etcdgrpc import GrpcTransport

    return GrpcTransport(options, max_body)


def _compare(key: str, mod_revision: int) -> dict[str, Any]:
    if mod_revision == 0:  # absent: version 0
        return {"key": key, "target": "VERSION", "result": "EQUAL", "version": 0}
    return {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}


@dataclass(frozen=True)
class _Page:
    kvs: list[KeyValue]
    more: bool
    revision: int
    last_key: bytes


def _range_op(
    start: bytes,
    end: bytes,
    limit: int,
    at: int,
    keys_only: bool = False,
    min_mod_revision: int = 0,
) -> Callable[[_Client], _Page | str]:
    """A range request for EtcdStore.call; "too large" or "compacted" instead of those errors."""
    body: dict[str, Any] = {"key": b64(start), "limit": limit}
    if end:
        body["range_end"] = b64(end)
    if at:
        body["revision"] = at
    if keys_only:
        body["keys_only"] = True
    if min_mod_revision:
        body["min_mod_revision"] = min_mod_revision

    def op(c: _Client) -> _Page | str:
        try:
            answer = c.request("/v3/kv/range", body)
        except TooLarge:
            return "too large"
        except GatewayError as exc:
            if at and "compacted" in exc.message:
                return "compacted"
            raise
        raw_kvs = items(answer, "kvs")
        kvs = [key_value(kv, oversized=keys_only) for kv in raw_kvs]
        last = raw(raw_kvs[-1], "key") if raw_kvs else b""
        return _Page(kvs, flag(answer, "more"), revision(answer), last)

    return op
