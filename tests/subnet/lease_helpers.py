"""Helpers for the lease manager's tests against a real etcd (imported by the tests)."""

from __future__ import annotations

import base64
import json
import re
import sys
import threading
import time
import traceback
from ipaddress import IPv4Address

from flannelish.subnet.lease import Event, LeaseAttrs
from flannelish.subnet.manager import SubnetManager

CONFIG = b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


def node_attrs(i: int) -> LeaseAttrs:
    return LeaseAttrs(
        IPv4Address(f"198.18.0.{i}"), "vxlan", {"VNI": 1, "VtepMAC": f"0a:00:00:00:00:{i:02x}"}
    )


def key_json(member, key: str) -> dict:
    """The key as etcdctl sees it (-w json): lease id as an int, value decoded."""
    out = json.loads(member.etcdctl("get", key, "-w", "json").stdout)
    kvs = out.get("kvs") or []
    if not kvs:
        return {}
    kv = kvs[0]
    return {"value": base64.b64decode(kv["value"]).decode(), "lease": int(kv.get("lease", 0))}


def grant(member, ttl: int) -> str:
    out = member.etcdctl("lease", "grant", str(ttl)).stdout
    match = re.search(r"lease ([0-9a-f]+) granted", out)
    assert match, out
    return match.group(1)


class EventCollector:
    """Runs watch_leases in a thread and records every batch with its arrival time."""

    def __init__(self, manager: SubnetManager, exclude=None):
        self.stop = threading.Event()
        self.batches: list[tuple[float, list[Event]]] = []
        self._cond = threading.Condition()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(manager, exclude), daemon=True)
        self._thread.start()

    def _run(self, manager, exclude) -> None:
        try:
            for batch in manager.watch_leases(self.stop, exclude):
                with self._cond:
                    self.batches.append((time.monotonic(), batch))
                    self._cond.notify_all()
        except BaseException as exc:
            self.error = exc

    @property
    def events(self) -> list[Event]:
        with self._cond:
            return [e for _, batch in self.batches for e in batch]

    def summary(self) -> list[tuple[str, str]]:
        return [(e.type.value, str(e.lease.subnet)) for e in self.events]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Event]:
        """Wait until at least `count` events arrived (snapshot included)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([e for _, b in self.batches for e in b]) < count:
                left = deadline - time.monotonic()
                assert left > 0, (
                    f"only {self.summary()} after {timeout}s (error: {self.error}); "
                    f"the watch thread is at:\n{self.where()}"
                )
                self._cond.wait(left)
        return self.events

    def where(self) -> str:
        """The watch thread's stack, so a timeout says where the watch was stuck."""
        frame = sys._current_frames().get(self._thread.ident or -1)
        return "".join(traceback.format_stack(frame)) if frame else "(thread ended)"

    def wait_snapshot(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.batches:
                left = deadline - time.monotonic()
                assert left > 0, f"no snapshot (error: {self.error})"
                self._cond.wait(left)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=10)
