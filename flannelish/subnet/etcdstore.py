"""The thin wrapper around the etcd client library.

Connection options live in flannelish.subnet.etcdoptions, watch streams in
flannelish.subnet.etcdwatch; both are re-exported here.  Only this module and
etcdwatch import etcd-sdk-python (``pyetcd``) and gRPC, and only
inside EtcdStore, so the CLI stays fast to start.  The wrapper exists to fix
what the library leaves to its callers (docs/dependencies.md §1):

* failover: a request that fails on one member is retried on the next one
  (the library marks the member failed but does not retry);
* a failed member is tried again after one second, not after 300 s;
* gRPC reconnect backoff is capped at 2 s, so a restarted etcd is used again soon;
* auth and TLS failures become EtcdAuthError/EtcdError with one readable
  cause instead of a raw gRPC status dump;
* simple auth tokens are per member and expire, so an "invalid auth token"
  answer triggers one re-authentication and a retry;
* listing a prefix reads it in pages at one revision (gRPC's receive limit
  would otherwise make a few large values fail the whole listing, exit 4).

Slightly over the usual ~450 lines: it is the only module that talks to the
etcd client, so every request kind and its failover live here together.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flannelish.errors import ConfigError, EtcdAuthError, EtcdError
from flannelish.subnet.etcderrors import (
    TLS_HINTS,
    connection_cause,
    error_code,
    error_details,
    is_too_large,
    tls_cause,
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
    KeyValue,
    WatchEvent,
    WatchResponseTooLarge,
    WatchStream,
    _kv,
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
PAGE_KEYS = 500
# gRPC's default receive limit is 4 MiB; a little more means fewer smaller pages and
# fewer watch re-lists, while one message still cannot take unbounded memory.
MAX_RECEIVE_BYTES = 16 * 1024 * 1024
_MAX_LIST_RESTARTS = 5


# --------------------------------------------------------------------------
# The client wrapper.  pyetcd and grpc are imported inside, never at the top.

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


class EtcdStore:
    """A connection to an etcd cluster with failover, retries and readable errors.

    Every method either succeeds or raises EtcdError / EtcdAuthError; a request
    that fails on one member is retried on the others before giving up.
    """

    def __init__(
        self,
        options: EtcdOptions,
        timeout: float = 5.0,
        retry_failed_after: float = 1.0,
        retry_window: float = 2.0,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
    ):
        import grpc
        import pyetcd

        self.options = options
        self.timeout = timeout
        self.retry_window = retry_window
        self._endpoints = options.parsed_endpoints
        creds = None
        if any(ep.secure for ep in self._endpoints):
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(options.cafile, "--etcd-cafile"),
                private_key=_read(options.keyfile, "--etcd-keyfile"),
                certificate_chain=_read(options.certfile, "--etcd-certfile"),
            )
        self._client = pyetcd.MultiEndpointEtcd3Client(
            [
                pyetcd.Endpoint(
                    f"[{ep.host}]" if ":" in ep.host else ep.host,
                    ep.port,
                    secure=ep.secure,
                    creds=creds if ep.secure else None,
                    time_retry=retry_failed_after,
                    opts=[
                        *_CHANNEL_OPTIONS,
                        ("grpc.max_receive_message_length", max_receive_bytes),
                    ],
                )
                for ep in self._endpoints
            ],
            timeout=timeout,
            failover=True,
        )
        # Authenticate lazily inside call(), so its errors get the same treatment.
        self._token_needed = bool(options.username)
        self._auth_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------

    @property
    def current_endpoint(self) -> str:
        ep = self._client.endpoint_in_use
        return f"{ep.protocol}://{ep.netloc}" if ep else "?"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)``, failing over between members; translate every error.

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
            try:
                if self._token_needed:
                    self._authenticate()
                return fn(self._client)
            except Exception as exc:
                kind, cause = self._classify(exc)
            if kind == "token" and not reauthenticated:
                # Simple tokens are per member and expire after 5 idle minutes.
                self._token_needed = reauthenticated = True
                continue
            if kind in ("auth", "token"):
                raise EtcdAuthError(f"etcd refused {what}", cause)
            if kind == "tls":
                raise EtcdAuthError(
                    f"TLS handshake with etcd at {self.current_endpoint} failed", cause
                )
            if kind == "other":
                raise EtcdError(f"etcd {what} failed", cause)
            if kind == "unavailable":  # a real connection error, worth reporting
                last_cause = f"{cause} (at {self.current_endpoint})"
            time.sleep(min(0.05 * 2 ** (attempt - 1), 0.5))
        raise EtcdError(
            f"etcd is unreachable at {','.join(self.options.endpoints)} ({what})", last_cause
        )

    def _authenticate(self) -> None:
        from pyetcd import etcdrpc

        with self._auth_lock:
            if not self._token_needed:
                return
            request = etcdrpc.AuthenticateRequest(
                name=self.options.username, password=self.options.password
            )
            try:
                response = self._client.authstub.Authenticate(request, self.timeout)
            except Exception as exc:
                if "authentication is not enabled" in error_details(exc):
                    log.warning("etcd has authentication disabled; --etcd-username is ignored")
                    self._client.metadata = None
                    self._token_needed = False
                    return
                raise
            # Only the metadata token: call credentials would refuse plain-text channels.
            self._client.metadata = (("token", response.token),)
            self._client.call_credentials = None
            self._token_needed = False

    def _classify(self, exc: BaseException) -> tuple[str, str]:
        """(kind, one-line cause); kind is "unavailable" (this member failed), "waiting"
        (all members failed recently), "tls", "auth", "token" (re-authenticate) or "other"."""
        import grpc
        from pyetcd import exceptions as etcd_exc

        if isinstance(exc, EtcdError):
            raise exc
        details = error_details(exc)
        low = details.lower()
        code = error_code(exc)
        if any(h in low for h in TLS_HINTS) and ("ssl" in low or "certificate" in low):
            return "tls", tls_cause(low, details, self.options)
        if "invalid auth token" in low or "auth: revision in header is old" in low:
            return "token", details
        if "authentication failed" in low or "invalid user id or password" in low:
            return (
                "auth",
                f"wrong --etcd-username or --etcd-password for user {self.options.username!r}",
            )
        if "user name is empty" in low or "user name not found" in low:
            if not self.options.username:
                return (
                    "auth",
                    "etcd has authentication enabled; give --etcd-username and --etcd-password",
                )
            return "auth", f"etcd user {self.options.username!r} does not exist"
        if "permission denied" in low or code == grpc.StatusCode.PERMISSION_DENIED:
            if not self.options.username:
                return "auth", (
                    "permission denied without credentials; give --etcd-username and "
                    "--etcd-password (or a client certificate of a permitted etcd user)"
                )
            return "auth", f"etcd user {self.options.username!r} lacks permission: {details}"
        if isinstance(exc, etcd_exc.NoServerAvailableError):
            return "waiting", "every etcd member failed recently"
        if isinstance(
            exc,
            etcd_exc.ConnectionFailedError
            | etcd_exc.ConnectionTimeoutError
            | etcd_exc.InternalServerError,
        ) or code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if isinstance(exc, grpc.RpcError):
                self._mark_failed()  # the library only does this for calls it wraps
            return "unavailable", connection_cause(details) or type(exc).__name__
        if isinstance(exc, ValueError) and "failed node" in details:
            return "waiting", "every etcd member failed recently"
        return "other", details or type(exc).__name__

    def _mark_failed(self) -> None:
        with contextlib.suppress(Exception):
            self._client.endpoint_in_use.fail()
            self._client._clear_old_stubs()

    def watch_metadata(self) -> tuple[tuple[str, str], ...]:
        # hasleader: etcd cancels the watch if its member loses the leader,
        # so we reconnect to a healthy member instead of waiting forever.
        return (*(self._client.metadata or ()), ("hasleader", "true"))

    # -- key-value operations --------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        """The key, or None; a value over the receive limit comes back ``oversized``."""
        resp = self.call(f"get {key}", _range_op(key.encode(), b"", 1, 0))
        oversized = resp == "too large"
        if oversized:
            resp = self.call(f"get {key}", _range_op(key.encode(), b"", 1, 0, keys_only=True))
        return _kv(resp.kvs[0], oversized) if resp.kvs else None

    def get_prefix(self, prefix: str, page_keys: int = PAGE_KEYS) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the revision of that snapshot.

        Read in pages of at most `page_keys` keys, all at the revision of the
        first page, each continuing after the last key of the one before.  A
        page over the receive limit is read again with a quarter of the keys;
        a single value over the limit is returned with ``oversized=True`` and
        no value.  A compaction of that revision mid-listing starts it over.
        """
        from pyetcd import utils

        end = utils.prefix_range_end(prefix.encode())
        for _ in range(_MAX_LIST_RESTARTS):
            result = self._list_pages(prefix, prefix.encode(), end, max(1, page_keys))
            if result is not None:
                return result
            log.info("listing %s: its revision was compacted meanwhile; listing again", prefix)
        raise EtcdError(f"etcd list {prefix} failed", "compacted during every attempt")

    def _list_pages(
        self, prefix: str, start: bytes, end: bytes, page_keys: int
    ) -> tuple[list[KeyValue], int] | None:
        """One paged listing; None if its revision was compacted meanwhile."""
        out: list[KeyValue] = []
        revision = 0
        limit = page_keys
        while True:
            resp = self.call(f"list {prefix}", _range_op(start, end, limit, revision))
            if resp == "compacted":
                return None
            if resp == "too large":
                if limit > 1:
                    limit = max(1, limit // 4)
                    continue
                # One value alone is over the limit: its key and metadata still count.
                resp = self.call(f"list {prefix}", _range_op(start, end, 1, revision, True))
                if isinstance(resp, str):
                    return None
                kvs = [_kv(kv, oversized=True) for kv in resp.kvs]
            else:
                kvs = [_kv(kv) for kv in resp.kvs]
                limit = min(page_keys, limit * 2)
            revision = revision or int(resp.header.revision)
            out.extend(kvs)
            if not resp.more or not kvs:
                return out, revision
            start = bytes(resp.kvs[-1].key) + b"\0"  # the raw key: names may not be UTF-8

    def put(self, key: str, value: bytes) -> int:
        return self.call(f"put {key}", lambda c: int(c.put(key, value).header.revision))

    def put_if(
        self, key: str, value: bytes, mod_revision: int, lease_id: int = 0
    ) -> KeyValue | None:
        """Put only if the key's mod revision is `mod_revision` (0: only if absent).

        Returns the key as written, or None if the comparison failed.
        """

        def op(c: Any) -> KeyValue | None:
            t = c.transactions
            compare = t.version(key) == 0 if mod_revision == 0 else t.mod(key) == mod_revision
            ok, responses = c.transaction(
                compare=[compare],
                success=[t.put(key, value, lease=lease_id or None), t.get(key)],
                failure=[],
            )
            if not ok:
                return None
            (val, meta) = responses[1][0]
            return KeyValue(key, val, int(meta.mod_revision), int(meta.lease_id))

        return self.call(f"write {key}", op)

    def delete(self, key: str, mod_revision: int = 0) -> bool:
        """Delete `key` (only at `mod_revision` if given); True if it was deleted."""

        def op(c: Any) -> bool:
            if not mod_revision:
                return bool(c.delete(key))
            t = c.transactions
            ok, _ = c.transaction(
                compare=[t.mod(key) == mod_revision], success=[t.delete(key)], failure=[]
            )
            return bool(ok)

        return self.call(f"delete {key}", op)

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new etcd lease: (id, granted TTL in seconds)."""
        lease = self.call(f"grant a {ttl}s lease", lambda c: c.lease(ttl))
        return int(lease.id), int(lease.ttl)

    def revoke(self, lease_id: int) -> None:
        def op(c: Any) -> None:
            try:
                c.revoke_lease(lease_id)
            except Exception as exc:
                if "lease not found" not in error_details(exc):
                    raise

        self.call(f"revoke lease {lease_id:x}", op)

    def ttl(self, lease_id: int) -> int:
        """Seconds left on a lease; -1 if it no longer exists."""
        return self.call(
            f"look up lease {lease_id:x}", lambda c: int(c.get_lease_info(lease_id).TTL)
        )

    def compact(self, revision: int) -> None:
        self.call(f"compact to {revision}", lambda c: c.compact(revision))

    def watch(self, prefix: str, start_revision: int) -> WatchStream:
        """Open a watch on every key under `prefix`, replaying from `start_revision`."""
        return self.call(f"watch {prefix}", lambda c: WatchStream(self, c, prefix, start_revision))


def _read(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}", exc.strerror) from None


def _range_op(
    start: bytes, end: bytes, limit: int, revision: int, keys_only: bool = False
) -> Callable[[Any], Any]:
    """A Range request for EtcdStore.call; "too large" or "compacted" instead of those errors."""

    def op(c: Any) -> Any:
        from pyetcd import etcdrpc

        request = etcdrpc.RangeRequest(
            key=start, range_end=end, limit=limit, revision=revision, keys_only=keys_only
        )
        try:
            return c.kvstub.Range(
                request, c.timeout, credentials=c.call_credentials, metadata=c.metadata
            )
        except Exception as exc:
            if is_too_large(exc):
                return "too large"
            if revision and "compacted" in error_details(exc):
                return "compacted"
            raise

    return op
