"""An in-memory stand-in for EtcdStore, enough for flannelish.policy.store.PolicyStore.

get/put/put_if/delete/get_prefix and watch (events pushed to every open
watch) over a dict, with revisions; leases are accepted and ignored.
"""

from __future__ import annotations

import queue
import threading

from flannelish.subnet.etcdwatch import KeyValue, WatchEvent


class _Watch:
    def __init__(self, store: MemoryStore, prefix: str) -> None:
        self.store, self.prefix = store, prefix
        self.queue: queue.Queue[WatchEvent] = queue.Queue()

    def next_events(self, timeout: float) -> list[WatchEvent]:
        try:
            events = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events

    def close(self) -> None:
        with self.store.lock:
            if self in self.store.watches:
                self.store.watches.remove(self)


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, KeyValue] = {}
        self.revision = 1
        self.lock = threading.Lock()
        self.watches: list[_Watch] = []

    def _emit(self, deleted: bool, kv: KeyValue) -> None:
        for w in self.watches:
            if kv.key.startswith(w.prefix):
                w.queue.put(WatchEvent(deleted, kv))

    def get(self, key: str) -> KeyValue | None:
        return self.data.get(key)

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self.lock:
            return sorted(
                (v for k, v in self.data.items() if k.startswith(prefix)), key=lambda v: v.key
            ), self.revision

    def put(self, key: str, value: bytes, lease_id: int = 0) -> int:
        with self.lock:
            self.revision += 1
            kv = self.data[key] = KeyValue(key, value, self.revision, lease_id)
            self._emit(False, kv)
            return self.revision

    def put_if(
        self, key: str, value: bytes, mod_revision: int, lease_id: int = 0
    ) -> KeyValue | None:
        current = self.data.get(key)
        if (current.mod_revision if current else 0) != mod_revision:
            return None
        self.put(key, value, lease_id)
        return self.data[key]

    def delete(self, key: str, mod_revision: int = 0) -> bool:
        with self.lock:
            kv = self.data.pop(key, None)
            if kv is None:
                return False
            self.revision += 1
            self._emit(True, KeyValue(key, b"", self.revision, 0))
            return True

    def watch(self, prefix: str, start_revision: int) -> _Watch:
        with self.lock:
            w = _Watch(self, prefix)
            self.watches.append(w)
            return w
