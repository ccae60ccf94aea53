"""etcd watch streams (the records read from etcd live in etcdjson, re-exported here).

WatchStream is one etcd watch, read by the thread that consumes it.
Besides the events it reports the conditions after which the caller must
re-list instead of resuming: HistoryCompacted, ClusterReset and
WatchResponseTooLarge (one response over the receive limit, e.g. a catch-up
batch of several large values; re-listing reads them in pages and resuming
after the listing never receives that batch again).

A watch may be idle for hours, so silence alone proves nothing; but a frozen
(SIGSTOPped, hung) member keeps its TCP connection open and silent too.  After
IDLE_PROBE_S without a message the watch asks the same member for its status
on a separate connection; no answer within PROBE_TIMEOUT_S ends the stream,
and the caller reconnects to another member (docs/dependencies.md §1).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from flannelish.errors import EtcdAuthError, EtcdError
from flannelish.subnet.etcderrors import classify, plain_reason
from flannelish.subnet.etcdhttp import TooLarge
from flannelish.subnet.etcdjson import (
    KeyValue,
    MalformedAnswer,
    WatchEvent,
    b64,
    flag,
    int64,
    items,
    obj,
    prefix_range_end,
    revision,
    text,
    watch_event,
)

if TYPE_CHECKING:
    from flannelish.subnet.etcdstore import EtcdStore, MessageStream, _Client

__all__ = [
    "ClusterReset",
    "HistoryCompacted",
    "KeyValue",
    "WatchEvent",
    "WatchResponseTooLarge",
    "WatchStream",
]

IDLE_PROBE_S = 10.0
PROBE_TIMEOUT_S = 5.0


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


class WatchResponseTooLarge(Exception):  # a signal to re-list, not a failure
    """A watch response was larger than the receive limit."""

    def __init__(self, details: str) -> None:
        super().__init__(f"an etcd watch response was too large to receive ({details})")


class WatchStream:
    """One etcd watch stream, read by the thread that asks for its events.

    ``next_events(timeout)`` returns the events of one response, [] on a
    timeout or progress message, and raises HistoryCompacted, ClusterReset
    (a response header's revision is below ``start_revision - 1``, the last
    revision the caller saw) or EtcdError when the stream ends; ``close()``
    ends it from any thread.  The caller's thread reads the socket itself: a
    reader thread handing messages over through a queue cost every lease
    event one more thread wake-up (~0.15 ms on a busy 2-CPU node).
    """

    def __init__(self, store: EtcdStore, client: _Client, prefix: str, start_revision: int):

        self._store = store
        self._client = client
        self.start_revision = start_revision
        self.endpoint = str(client.endpoint)
        self.established = False  # set by etcd's "created" answer
        self._closed = threading.Event()
        self._ended: Exception | None = None  # raised again by every later call
        self._quiet_since = time.monotonic()
        # hasleader: etcd cancels the watch if its member loses the leader,
        # so we reconnect to a healthy member instead of waiting forever.
        self._stream: MessageStream = client.stream(
            "/v3/watch",
            {
                "create_request": {
                    "key": b64(prefix.encode()),
                    "range_end": b64(prefix_range_end(prefix.encode())),
                    "start_revision": start_revision,
                }
            },
            {"Grpc-Metadata-hasleader": "true"},
        )

    def next_events(self, timeout: float) -> list[WatchEvent]:
        if self._ended is not None:
            raise self._ended
        try:
            message = self._next_message(timeout)
        except Exception as exc:
            self._ended = self._ending(exc)
            self.close()
            raise self._ended from None
        if message is None:
            return []
        try:
            return self._events(message)
        except MalformedAnswer as exc:
            self.close()
            raise EtcdError(
                f"etcd watch on {self.endpoint} ended", f"etcd's answer is malformed: {exc}"
            ) from None

    def _next_message(self, timeout: float) -> dict[str, Any] | None:
        """The next message within `timeout`, or None; after IDLE_PROBE_S of silence
        the member is asked for its status (raises if it is frozen)."""
        if self._closed.is_set():
            raise EtcdError("watch closed")
        message = self._stream.next_message(timeout)
        now = time.monotonic()
        if message is not None:
            self._quiet_since = now
        elif now - self._quiet_since >= IDLE_PROBE_S:
            self._client.probe(PROBE_TIMEOUT_S)
            self._quiet_since = time.monotonic()
        return message

    def _ending(self, exc: Exception) -> Exception:
        """What the caller gets for the failure that ended the stream."""
        if self._closed.is_set():
            return EtcdError("watch closed")
        if isinstance(exc, TooLarge):
            return WatchResponseTooLarge(str(exc))
        kind, cause = classify(exc, self._store.options)
        if kind == "token":  # expired: the reconnect authenticates again first
            self._store._token_needed = True
        if kind == "unavailable":
            self._client.fail()
        error_type = EtcdAuthError if kind in ("auth", "tls") else EtcdError
        return error_type(f"etcd watch on {self.endpoint} ended", cause)

    def _events(self, message: dict[str, Any]) -> list[WatchEvent]:
        if "error" in message:
            from flannelish.subnet.etcdhttp import error_from

            self.close()
            kind, cause = classify(error_from(message), self._store.options)
            if kind == "unavailable":  # "no leader" (hasleader), shutting down
                self._client.fail()
            error_type = EtcdAuthError if kind in ("auth", "tls") else EtcdError
            raise error_type(f"etcd watch on {self.endpoint} ended", cause)
        item = obj(message, "result")
        compact_revision = int64(item, "compact_revision")
        if compact_revision:
            raise HistoryCompacted(compact_revision)
        # The "created" answer carries the cluster's current revision: a recreated,
        # empty cluster is behind the revision we resume from.
        current = revision(item)
        if current and self.start_revision > 1 and current < self.start_revision - 1:
            raise ClusterReset(current, self.start_revision - 1)
        if flag(item, "canceled"):
            self._canceled(plain_reason(text(item, "cancel_reason")))
        if flag(item, "created"):
            self.established = True
        return [watch_event(ev) for ev in items(item, "events")]

    def _canceled(self, reason: str) -> None:
        self.close()
        if any(
            x in reason for x in ("permission denied", "invalid auth token", "user name is empty")
        ):
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
            self._client.fail()
        raise EtcdError("etcd canceled the watch", reason[:200] or self.endpoint)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):
            self._stream.close()
