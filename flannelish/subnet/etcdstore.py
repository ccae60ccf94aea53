"""etcd connection options and the thin wrapper around the etcd client library.

Only this module imports etcd-sdk-python (``pyetcd``) and gRPC, and only
inside EtcdStore, so the CLI stays fast to start.  The wrapper exists to fix
what the library leaves to its callers (docs/dependencies.md §1):

* failover: a request that fails on one member is retried on the next one
  (the library marks the member failed but does not retry);
* a failed member is tried again after one second, not after 300 s;
* gRPC reconnect backoff is capped at 2 s, so a restarted etcd is used again soon;
* auth and TLS failures become EtcdAuthError/EtcdError with one readable
  cause instead of a raw gRPC status dump;
* simple auth tokens are per member and expire, so an "invalid auth token"
  answer triggers one re-authentication and a retry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flannelish.errors import ConfigError, EtcdAuthError, EtcdError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_PORT = 2379

T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """One etcd member URL, split into the parts gRPC needs."""

    scheme: str
    host: str
    port: int

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"


@dataclass(frozen=True)
class EtcdOptions:
    """Validated etcd connection settings (flanneld's --etcd-* flags)."""

    endpoints: list[str] = field(default_factory=lambda: DEFAULT_ENDPOINTS.split(","))
    prefix: str = DEFAULT_PREFIX
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_flags(
        cls,
        endpoints: str | list[str] | tuple[str, ...] = DEFAULT_ENDPOINTS,
        prefix: str = DEFAULT_PREFIX,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> EtcdOptions:
        """Build from flag values; raises ConfigError naming the bad flag."""
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        urls = [e.strip() for e in endpoints if e and e.strip()]
        if not urls:
            raise ConfigError("--etcd-endpoints is empty", "give at least one etcd URL")
        parsed = [str(parse_endpoint(u)) for u in urls]
        cafile, certfile, keyfile = (v or None for v in (cafile, certfile, keyfile))
        username, password = username or None, password or None
        if bool(certfile) != bool(keyfile):
            given, missing = (
                ("--etcd-certfile", "--etcd-keyfile")
                if certfile
                else ("--etcd-keyfile", "--etcd-certfile")
            )
            raise ConfigError(f"{given} needs {missing} as well")
        for flag, path, marker in (
            ("--etcd-cafile", cafile, "CERTIFICATE-----"),
            ("--etcd-certfile", certfile, "CERTIFICATE-----"),
            ("--etcd-keyfile", keyfile, "PRIVATE KEY-----"),
        ):
            if path:
                _check_pem(flag, path, marker)
        if bool(username) != bool(password):
            raise ConfigError(
                "--etcd-username and --etcd-password must be given together",
                "only --etcd-username is set" if username else "only --etcd-password is set",
            )
        if (cafile or certfile) and not any(u.startswith("https://") for u in parsed):
            log.warning(
                "TLS files are given but no --etcd-endpoints URL is https://; "
                "connecting to etcd without TLS"
            )
        return cls(parsed, normalize_prefix(prefix), cafile, certfile, keyfile, username, password)

    @property
    def parsed_endpoints(self) -> list[Endpoint]:
        return [parse_endpoint(u) for u in self.endpoints]


def parse_endpoint(url: str) -> Endpoint:
    """``http(s)://host[:port]`` (or bare ``host:port``, meaning http) to an Endpoint."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"--etcd-endpoints: invalid URL {url!r}", str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"--etcd-endpoints: {url!r} must start with http:// or https://",
            f"scheme {parts.scheme!r} is not supported",
        )
    if not parts.hostname:
        raise ConfigError(f"--etcd-endpoints: {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--etcd-endpoints: {url!r} must not have a path or query")
    return Endpoint(parts.scheme, parts.hostname, port)


def normalize_prefix(prefix: str) -> str:
    """Join-style cleanup as Flannel's path.Join: one leading slash, no doubles, no trailing."""
    if not prefix or not prefix.strip("/ "):
        raise ConfigError("--etcd-prefix is empty", f"got {prefix!r}")
    if any(c.isspace() for c in prefix):
        raise ConfigError("--etcd-prefix must not contain spaces", f"got {prefix!r}")
    return "/" + re.sub("/+", "/", prefix.strip("/"))


def _check_pem(flag: str, path: str, marker: str) -> None:
    """Fail early: gRPC would only print C-level errors and report the endpoint unreachable."""
    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ConfigError(f"{flag}: cannot read {path!r}", _why_unreadable(path))
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}", exc.strerror) from None
    if marker.encode() not in text:
        kind = "private key" if "KEY" in marker else "certificate"
        raise ConfigError(f"{flag}: {path!r} is not a PEM {kind}", f"no '-----BEGIN ...{marker}'")


def _why_unreadable(path: str) -> str:
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "it is a directory"
    return "permission denied"


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
_TLS_HINTS = (
    "certificate_verify_failed",
    "certificate verify failed",
    "ssl handshake failed",
    "handshake failed",
    "ssl_error",
    "wrong_version_number",
    "tls",
)


class HistoryCompacted(Exception):  # a signal to re-list, not a failure
    """The watch start revision is older than etcd's compacted history."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd history compacted up to revision {compact_revision}")
        self.compact_revision = compact_revision


class ClusterReset(Exception):  # a signal to re-list, not a failure
    """etcd's revision is below one we already saw: the cluster was recreated without its
    data (restored from scratch on the same endpoint).  A watch resuming from the old
    revision would wait silently until the new cluster's revision catches up."""

    def __init__(self, revision: int, last_seen: int) -> None:
        super().__init__(
            f"etcd is at revision {revision}, below revision {last_seen} seen before: "
            "the cluster was recreated without its data"
        )
        self.revision = revision
        self.last_seen = last_seen


@dataclass(frozen=True)
class KeyValue:
    """One key as read from etcd (or from a watch event)."""

    key: str
    value: bytes
    mod_revision: int
    lease_id: int


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue


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
                    opts=_CHANNEL_OPTIONS,
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
                if "authentication is not enabled" in _details(exc):
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
        details = _details(exc)
        low = details.lower()
        code = _code(exc)
        if any(h in low for h in _TLS_HINTS) and ("ssl" in low or "certificate" in low):
            return "tls", _tls_cause(low, details, self.options)
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
            return "unavailable", _connection_cause(details) or type(exc).__name__
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
        def op(c: Any) -> KeyValue | None:
            resp = c.get_response(key)
            return _kv(resp.kvs[0]) if resp.count else None

        return self.call(f"get {key}", op)

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the revision of that snapshot."""

        def op(c: Any) -> tuple[list[KeyValue], int]:
            resp = c.get_prefix_response(prefix)
            return [_kv(kv) for kv in resp.kvs], int(resp.header.revision)

        return self.call(f"list {prefix}", op)

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
                if "lease not found" not in _details(exc):
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


class WatchStream:
    """One etcd watch stream, read by a background thread into a queue.

    ``next_events(timeout)`` returns the events of one response, [] on a
    timeout or progress message, and raises HistoryCompacted, ClusterReset
    (a response header's revision is below ``start_revision - 1``, the last
    revision the caller saw) or EtcdError when the stream ends; ``close()``
    ends it from any thread.
    """

    def __init__(self, store: EtcdStore, client: Any, prefix: str, start_revision: int):
        from pyetcd import etcdrpc, utils

        self._store = store
        self.start_revision = start_revision
        self.endpoint = store.current_endpoint
        self.established = False  # set by etcd's "created" answer
        request = etcdrpc.WatchRequest(
            create_request=etcdrpc.WatchCreateRequest(
                key=prefix.encode(),
                range_end=utils.prefix_range_end(prefix.encode()),
                start_revision=start_revision,
            )
        )
        self._closed = threading.Event()

        def requests() -> Iterator[Any]:
            yield request
            self._closed.wait()  # keep the send side open until close()

        self._queue: queue.Queue[Any] = queue.Queue()
        stub = etcdrpc.WatchStub(client.channel)
        self._call = stub.Watch(requests(), metadata=store.watch_metadata())
        self._reader = threading.Thread(target=self._read, name="etcd-watch", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._queue.put(response)
            self._queue.put(EtcdError("etcd closed the watch stream", self.endpoint))
        except Exception as exc:
            if self._closed.is_set():
                self._queue.put(EtcdError("watch closed"))
                return
            kind, cause = self._store._classify(exc)
            if kind == "token":  # expired: the reconnect authenticates again first
                self._store._token_needed = True
            error_type = EtcdAuthError if kind in ("auth", "tls") else EtcdError
            self._queue.put(error_type(f"etcd watch on {self.endpoint} ended", cause))

    def next_events(self, timeout: float) -> list[WatchEvent]:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if isinstance(item, Exception):
            raise item
        if item.compact_revision:
            raise HistoryCompacted(int(item.compact_revision))
        # The "created" answer carries the cluster's current revision: a recreated,
        # empty cluster is behind the revision we resume from.
        revision = int(item.header.revision) if item.HasField("header") else 0
        if revision and self.start_revision > 1 and revision < self.start_revision - 1:
            raise ClusterReset(revision, self.start_revision - 1)
        if item.canceled:
            reason = (item.cancel_reason or "").replace("etcdserver: ", "")
            if "permission denied" in reason or "invalid auth token" in reason:
                if not self._store.options.username:
                    raise EtcdAuthError(
                        "etcd refused the watch",
                        "permission denied without credentials; give --etcd-username and "
                        "--etcd-password",
                    )
                # Most likely our token expired while the stream was down: log in again.
                self._store._token_needed = True
            if "no leader" in reason:
                # This member is cut off from the cluster (hasleader): use another one.
                self._store._mark_failed()
            raise EtcdError("etcd canceled the watch", reason or self.endpoint)
        if item.created:
            self.established = True
        return [WatchEvent(ev.type == 1, _kv(ev.kv)) for ev in item.events]  # 1 = DELETE

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):
            self._call.cancel()


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        kv.key.decode(errors="replace"), bytes(kv.value), int(kv.mod_revision), int(kv.lease)
    )


def _read(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}", exc.strerror) from None


def _details(exc: BaseException) -> str:
    """The readable part of a gRPC error, also when pyetcd re-raised it as its own type."""
    for candidate in (exc, exc.__context__, exc.__cause__):
        details = getattr(candidate, "details", None)
        if callable(details):
            with contextlib.suppress(Exception):
                text = details()
                if text:
                    return str(text).replace("etcdserver: ", "")
    return str(exc)


_SOCKET_ERRORS = re.compile(
    r"connection refused|connection reset|no route to host|network is unreachable|"
    r"deadline exceeded|socket closed|connection timed out|name resolution|dns resolution",
    re.IGNORECASE,
)


def _connection_cause(details: str) -> str:
    """A short cause ("connection refused") instead of gRPC's whole connect report."""
    if "handshake" in details.lower():
        return "TLS handshake failed: the server closed the connection (is it plain http://?)"
    match = _SOCKET_ERRORS.search(details)
    return match.group(0).lower() if match else details.splitlines()[0][:200] if details else ""


def _code(exc: BaseException) -> Any:
    for candidate in (exc, exc.__context__):
        code = getattr(candidate, "code", None)
        if callable(code):
            with contextlib.suppress(Exception):
                return code()
    return None


def _tls_cause(low: str, details: str, options: EtcdOptions) -> str:
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        source = f"--etcd-cafile {options.cafile!r}" if options.cafile else "the system CA store"
        return f"the etcd server certificate is not trusted by {source}"
    if "wrong_version_number" in low:
        return "the server does not speak TLS; use an http:// endpoint"
    return details.splitlines()[0][:200]
