"""etcd watch streams and the records read from etcd.

WatchStream is one etcd watch, read by a background thread into a queue.
Besides the events it reports the conditions after which the caller must
re-list instead of resuming: HistoryCompacted, ClusterReset and
WatchResponseTooLarge (one response over the channel's receive limit, e.g.
a catch-up batch of several large values; re-listing reads them in pages
and resuming after the listing never receives that batch again).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flannelish.errors import EtcdAuthError, EtcdError
from flannelish.subnet.etcderrors import first_line, is_too_large

if TYPE_CHECKING:
    from flannelish.subnet.etcdstore import EtcdStore


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
    """A watch response was larger than the gRPC receive limit."""

    def __init__(self, details: str) -> None:
        super().__init__(f"an etcd watch response was too large to receive ({details})")


@dataclass(frozen=True)
class KeyValue:
    """One key as read from etcd (or from a watch event).

    ``oversized``: the value was too large to receive at all (over the gRPC
    receive limit even alone); ``value`` is then empty.
    """

    key: str
    value: bytes
    mod_revision: int
    lease_id: int
    oversized: bool = False


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue


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
            if is_too_large(exc):
                self._queue.put(WatchResponseTooLarge(first_line(exc)))
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


def _kv(kv: Any, oversized: bool = False) -> KeyValue:
    return KeyValue(
        kv.key.decode(errors="replace"),
        b"" if oversized else bytes(kv.value),
        int(kv.mod_revision),
        int(kv.lease),
        oversized,
    )
