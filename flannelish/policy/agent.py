"""The daemon's policy component: etcd -> compiled sets and rules -> the policy nft table.

``PolicyAgent`` keeps the cluster view (policies, namespaces, endpoints) from
one etcd watch in an IncrementalCompiler, this node's endpoints in memory
(authoritative here: a pod added through the CNI socket is in the sets before
its ADD returns), and the last ruleset it applied.  Every change converges:
the events that have arrived are taken together, only the policies they touch
are compiled again, and the difference to the applied ruleset goes to the
kernel as one nft transaction (set elements added and deleted, changed chains
refilled; the table is rewritten whole only at start-up, after a failure or a
repair).  Every resync it checks the kernel's table against what it applied
and rewrites it if it drifted.

The marker file ``<dir of subnet.env>/flannelish-policy.json`` tells the CNI
plugin that policy is in force on this node: its in-process path (no daemon)
then refuses ADD with a retryable error instead of starting an unprotected pod.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flannelish.cni.handler import POLICY_MARKER
from flannelish.errors import FlannelishError

from .compile import FAMILY, TABLE, Compiled, render, render_delta
from .evaluate import World
from .incremental import IncrementalCompiler
from .model import Endpoint
from .parse import parse_policy
from .store import ENDPOINTS, NAMESPACES, POLICIES, PolicyStore, _decode, namespace_from

if TYPE_CHECKING:
    from flannelish.kernel.nft import NftRunner

log = logging.getLogger("flannelish.policy")

MARKER_NAME = POLICY_MARKER
BATCH_MAX = 5000  # watch events taken into one convergence at most


@dataclass
class PolicyStats:
    converges: int = 0
    full_rewrites: int = 0
    repairs: int = 0
    errors: int = 0
    last_seconds: float = 0.0
    last_error: str = ""
    drops: dict[str, int] = field(default_factory=dict)  # policy key -> dropped packets


class PolicyAgent:
    def __init__(
        self,
        store: PolicyStore,
        nft: NftRunner,
        node: str,
        state_dir: Path,
        resync_s: float = 10.0,
        netns: str | None = None,
    ) -> None:
        self.netns = netns  # the node's namespace for sysctls (None: the daemon's own)
        self.bridge_hooks = ""
        self.store = store
        self.nft = nft
        self.node = node
        self.marker = state_dir / MARKER_NAME
        self.resync_s = resync_s
        self.lease_id = 0
        self.local: dict[str, Endpoint] = {}
        self._compiler = IncrementalCompiler(node)
        self._applied: Compiled | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._threads: list[threading.Thread] = []
        self._generation = 0  # bumped by every applied transaction
        self.stats = PolicyStats()
        self.synced = threading.Event()

    # -- lifecycle -------------------------------------------------------------------
    def start(self, lease_id: int = 0) -> None:
        self.lease_id = lease_id
        self._write_marker()
        self.bridge_hooks = self.ensure_bridge_hooks()
        world, revision = self.store.snapshot()
        with self._lock:
            for ep in world.endpoints:
                if ep.node == self.node:
                    self.local[ep.container_id] = ep
            self._reset(world)
            self._converge()
        for ep in list(self.local.values()):  # re-bind our endpoints to the current lease
            self._put(ep)
        self.synced.set()
        # the drift check lists the whole table (slow with many elements): its own
        # thread, so a change is never waiting behind it
        self._threads = [
            threading.Thread(target=self._run, args=(revision,), name="policy", daemon=True),
            threading.Thread(target=self._resync, name="policy-resync", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop watching; the table and the marker stay (pods stay protected across restarts)."""
        self._stop.set()
        self._dirty.set()
        for t in self._threads:
            t.join(timeout=5)

    def ensure_bridge_hooks(self) -> str:
        """Bridged (same-node) pod traffic must reach the inet forward hook: br_netfilter on.

        Without it a same-node connection would bypass every policy; the daemon
        turns it on in its namespace (loading the module if it can) and reports
        what it found.  Returns "" when on, or why it could not be turned on.
        """
        import subprocess

        from flannelish.kernel.netns import in_netns

        base = "/proc/sys/net/bridge/bridge-nf-call-ip"
        with in_netns(self.netns):
            if not os.path.exists(base + "tables"):
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=10)
            problems = []
            for name in ("tables", "6tables"):
                try:
                    with open(base + name, "r+") as fh:
                        if fh.read().strip() != "1":
                            fh.seek(0)
                            fh.write("1")
                except OSError as exc:
                    problems.append(f"{base}{name}: {exc.strerror}")
        if problems:
            log.error("same-node pod traffic is NOT policed: %s", "; ".join(problems))
        return "; ".join(problems)

    def _write_marker(self) -> None:
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"node": self.node, "table": f"{FAMILY} {TABLE}", "pid": os.getpid()})
        )
        os.replace(tmp, self.marker)

    # -- the CNI side (called from the CNI server's threads) ---------------------------
    def register(self, ep: Endpoint) -> None:
        """Record the endpoint in etcd and in this node's sets; raises if either fails."""
        self._put(ep)
        with self._lock:
            self.local[ep.container_id] = ep
            self._compiler.put_endpoint(ep)
            self._converge()
        if self.stats.last_error and self._applied is None:
            raise FlannelishError("policy table not applied", self.stats.last_error)

    def unregister(self, container_id: str) -> None:
        with self._lock:
            ep = self.local.pop(container_id, None)
            if ep is not None:
                self._compiler.delete_endpoint(f"{self.node}/{container_id}")
                self._converge()
        self.store.delete_endpoint(self.node, container_id)

    def gc(self, valid: set[str]) -> list[str]:
        gone = [cid for cid in list(self.local) if cid not in valid]
        for cid in gone:
            self.unregister(cid)
        return gone

    def lease_changed(self, lease_id: int) -> None:
        if lease_id and lease_id != self.lease_id:
            self.lease_id = lease_id
            for ep in list(self.local.values()):
                try:
                    self._put(ep)
                except FlannelishError as exc:
                    log.warning(
                        "cannot re-bind endpoint %s to the new lease: %s", ep.container_id, exc
                    )

    def _put(self, ep: Endpoint) -> None:
        self.store.put_endpoint(ep, self.lease_id)

    # -- convergence -----------------------------------------------------------------
    def view(self) -> World:
        """The cluster view with this node's endpoints as we know them."""
        with self._lock:
            return self._compiler.world()

    def _reset(self, world: World) -> None:
        """A full listing, with this node's endpoints as we know them (not as etcd has them)."""
        eps = [e for e in world.endpoints if e.node != self.node] + list(self.local.values())
        self._compiler.reset(World(world.policies, eps, world.namespaces))

    def _converge(self, force_full: bool = False) -> None:
        started = time.monotonic()
        compiled = self._compiler.compiled()
        if compiled is self._applied and not force_full:
            return  # nothing that changes the ruleset
        script = (
            None if force_full or self._applied is None else render_delta(self._applied, compiled)
        )
        full = script is None
        try:
            if script is None:
                self.nft.run(render(compiled))
            elif script:
                self.nft.run(script)
        except FlannelishError as exc:
            self.stats.errors += 1
            self.stats.last_error = str(exc)
            log.warning("policy table not applied: %s", exc)
            self._applied = None  # rewrite in full next time
            return
        self._applied = compiled
        self._generation += 1
        self.stats.converges += 1
        self.stats.full_rewrites += int(full)
        self.stats.last_error = ""
        self.stats.last_seconds = time.monotonic() - started

    def _resync(self) -> None:
        """Every resync_s: the drift check; every second: retry a transaction that failed."""
        last_check = time.monotonic()
        while not self._stop.wait(min(1.0, self.resync_s)):
            try:
                if self._applied is None:
                    with self._lock:
                        self._converge()
                if time.monotonic() - last_check >= self.resync_s:
                    last_check = time.monotonic()
                    self.check()
            except Exception as exc:  # never let the checker die
                log.warning("policy resync: %s", exc)

    def _run(self, revision: int) -> None:
        while not self._stop.is_set():
            try:
                watch = self.store.watch(revision + 1)
            except FlannelishError as exc:
                log.warning("policy watch: %s", exc)
                self._stop.wait(1.0)
                continue
            try:
                while not self._stop.is_set():
                    events = watch.next_events(timeout=0.5)
                    # a burst is taken whole: what arrived while we converged, no waiting
                    while events and len(events) < BATCH_MAX:
                        more = watch.next_events(timeout=0)
                        if not more:
                            break
                        events += more
                    if events:
                        with self._lock:
                            for ev in events:
                                self._event(ev.deleted, ev.kv.key, ev.kv.value)
                                revision = max(revision, ev.kv.mod_revision)
                            self._converge()
            except Exception as exc:  # compaction, reset, errors: re-list and watch again
                log.info("policy watch restarts: %s", exc)
                with contextlib.suppress(Exception):
                    world, revision = self.store.snapshot()
                    with self._lock:
                        self._reset(world)
                        self._converge()
            finally:
                watch.close()

    def _event(self, deleted: bool, key: str, value: bytes) -> None:
        """One watch event into the compiler; a value that does not decode counts as deleted."""
        try:
            self._apply_event(deleted, key, value)
            self.store.bad.pop(key, None)
        except Exception as exc:
            log.warning("skipping %s: %s", key, exc)
            self.store.bad[key] = str(exc)
            self._apply_event(True, key, b"")

    def _apply_event(self, deleted: bool, key: str, value: bytes) -> None:
        c = self._compiler
        if key.startswith(POLICIES):
            name = key[len(POLICIES) :]
            if deleted:
                c.delete_policy(name)
                return
            policy = parse_policy(_decode(value))
            if policy.key != name:
                raise ValueError(f"the document names {policy.key}, not {name}")
            c.put_policy(policy)
        elif key.startswith(NAMESPACES):
            name = key[len(NAMESPACES) :]
            if deleted:
                c.delete_namespace(name)
                return
            c.put_namespace(namespace_from(name, _decode(value)))
        elif key.startswith(ENDPOINTS):
            name = key[len(ENDPOINTS) :]
            if name.split("/", 1)[0] == self.node:
                return  # ours: this node's own record is authoritative
            if deleted:
                c.delete_endpoint(name)
                return
            ep = Endpoint.from_dict(_decode(value))
            if f"{ep.node}/{ep.container_id}" != name:
                raise ValueError(f"the endpoint is {ep.node}/{ep.container_id}, not {name}")
            c.put_endpoint(ep)

    def check(self) -> bool:
        """Repair: rewrite the table if the kernel's differs from what we applied.

        The listing is taken without the lock (changes go on meanwhile); if one
        was applied during it, the comparison waits for the next check.
        """
        with self._lock:
            generation, applied = self._generation, self._applied
        try:
            items = self.nft.listing("table", FAMILY, TABLE)
        except FlannelishError as exc:
            log.warning("cannot list the policy table: %s", exc)
            return False
        with self._lock:
            if generation != self._generation:
                return True
            self._read_counters(items or [])
            if applied is not None and items is not None and _intact(items, applied):
                return True
            log.warning("policy table missing or changed: rewriting it")
            self.stats.repairs += 1
            self._converge(force_full=True)
            return False

    def _read_counters(self, items: list[dict[str, Any]]) -> None:
        if self._applied is None:
            return
        self.stats.drops = {}  # policies deleted since are no longer reported
        for item in items:
            c = item.get("counter")
            if isinstance(c, dict) and c.get("name") in self._applied.counters:
                self.stats.drops[self._applied.counters[c["name"]]] = int(c.get("packets", 0))

    # -- reporting -------------------------------------------------------------------
    def read_drops(self) -> None:
        """Fresh drop counters (a small listing: the counters only)."""
        try:
            items = self.nft.listing("counters", "table", FAMILY, TABLE)
        except FlannelishError as exc:
            log.debug("cannot read the policy counters: %s", exc)
            return
        with self._lock:
            self._read_counters(items or [])

    def status(self) -> dict[str, Any]:
        self.read_drops()
        w = self.view()
        applied = self._applied
        sizes = {n: len(e) for n, e in applied.elements.items()} if applied else {}
        return {
            "enabled": True,
            "table": f"{FAMILY} {TABLE}",
            "bridge_hooks": self.bridge_hooks or "on",
            "applied": applied is not None,
            "policies": len(w.policies),
            "endpoints": len(w.endpoints),
            "local_endpoints": len(self.local),
            "rules": len(applied.rules) if applied else 0,
            "sets": len(sizes),
            "set_elements": sum(sizes.values()),
            "largest_set": max(sizes.values(), default=0),
            "converges": self.stats.converges,
            "full_rewrites": self.stats.full_rewrites,
            "repairs": self.stats.repairs,
            "errors": self.stats.errors,
            "last_error": self.stats.last_error,
            "last_seconds": round(self.stats.last_seconds, 4),
            "drops": dict(self.stats.drops),
            "bad_keys": dict(self.store.bad),
        }


def _intact(items: list[dict[str, Any]], applied: Compiled) -> bool:
    """Sets, their element counts and the rule count as applied (a cheap drift check)."""
    rules = sum(1 for i in items if "rule" in i)
    sets = {i["set"]["name"]: i["set"] for i in items if "set" in i}
    if rules != len(applied.rules) or set(sets) != set(applied.sets):
        return False
    for name, s in sets.items():
        if len(s.get("elem", [])) != len(applied.elements.get(name, ())):
            return False
    return True
