"""Node health: readiness state, Prometheus metrics and the HTTP endpoints serving them.

Design
------
:class:`NodeState` is the one object the daemon updates as it works (lease
held, subnet.env written, each reconcile pass, peer counts, etcd errors); the
HTTP server only reads it.  Every update takes a lock and is O(1), so the
daemon's threads never wait on a scrape.

Readiness (``/readyz``) is the conjunction of four checks, each reported by
name so an operator sees *why* a node is not ready:

* ``lease``      -- a lease is held and has not expired;
* ``etcd``       -- the etcd probe the daemon supplied answered within its
                    timeout (cached for ``probe_interval`` so scrapes cannot
                    hammer etcd; no probe supplied counts as healthy);
* ``reconcile``  -- the last reconcile pass had no errors;
* ``subnet-env`` -- subnet.env has been written.

Optional extra checks (``state.set_check("nftables", ok, detail)``) join the
conjunction, e.g. the masquerade table when ``--ip-masq`` is set.

Endpoints on ``--healthz-ip:--healthz-port`` (the daemon starts the server
only when the port is non-zero, like flanneld; port 0 here means "any free
port", which the tests use):

* ``GET /healthz`` -> 200 ``flannelish is running``
* ``GET /readyz``  -> 200 or 503, one ``[+]``/``[-]`` line per check
* ``GET /metrics`` -> Prometheus text format (prometheus-client)
* ``GET /status``  -> JSON document for ``flannelish status`` (schema in
  docs/architecture.md, "Contracts between packages"); its ``version`` field is bumped on
  incompatible changes.

Metrics (flannelish.node.metrics) live in a private CollectorRegistry per
NodeState, so several nodes (tests, the lab) can share one process.

The HTTP server itself (timeouts, connection cap, quiet resets) is in
flannelish.node.healthserver; HealthServer is re-exported here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Counter_
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from flannelish.node.healthserver import MAX_CONNECTIONS, REQUEST_TIMEOUT_S, HealthServer
from flannelish.node.metrics import Metrics

log = logging.getLogger("flannelish.node.health")

__all__ = ["MAX_CONNECTIONS", "REQUEST_TIMEOUT_S", "Check", "HealthServer", "NodeState"]

STATUS_VERSION = 1
CORE_CHECKS = ("lease", "etcd", "reconcile", "subnet-env")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


class NodeState:
    """Everything ``/readyz``, ``/metrics`` and ``/status`` report; updated by the daemon."""

    def __init__(
        self,
        *,
        node: str = "",
        backend: str = "",
        device: str | None = None,
        etcd_probe: Callable[[], None] | None = None,
        etcd_timeout: float = 2.0,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.metrics = Metrics(CollectorRegistry(auto_describe=True))
        self.node = node
        self.backend = backend
        self.device = device
        self.devices: list[str] = [device] if device else []  # one per family (VXLAN)
        self.lease_v6: dict[str, str | None] = {}  # ipv6_subnet, ipv6_network, public_ipv6
        self.peers_by_family: dict[str, int] = {}
        self.family_details: dict[str, dict[str, Any]] = {}  # /status by_family
        self.public_ip: str | None = None
        self.subnet: IPv4Network | None = None
        self.network: IPv4Network | None = None
        self.lease_expiration: float | None = None  # None with a lease: a reservation
        self.lease_held = False
        self.subnet_env_path: str | None = None
        self.subnet_env_written = False
        self.peers_in_etcd = 0
        self.peers_programmed = 0
        self.skipped_peers: dict[str, str] = {}
        self._skip_kinds: set[str] = set()
        self.skipped_count = 0
        self.bad_leases: dict[str, str] = {}
        self._peer_source: Callable[[], tuple[int, int, dict[str, tuple[str, str]]]] | None = None
        self._bad_source: Callable[[], dict[str, str]] | None = None
        self._wireguard_source: Callable[[], dict[str, Any]] | None = None
        self.last_reconcile: dict[str, Any] | None = None
        self.reconcile_ok: bool | None = None  # None: no pass yet
        self.started_at = clock()
        self._extra: dict[str, Check] = {}
        self.sections: dict[str, Callable[[], Any]] = {}  # more /status keys, e.g. "policy"
        self._probe = etcd_probe
        self._probe_timeout = etcd_timeout
        self._probe_interval = probe_interval
        self._probe_cache: tuple[float, Check] | None = None
        self._probe_lock = threading.Lock()
        self._probe_thread: threading.Thread | None = None

    # -- updates from the daemon -----------------------------------------------

    def set_lease(
        self,
        subnet: IPv4Network | str,
        expiration: float | None,
        *,
        public_ip: str | None = None,
        network: IPv4Network | str | None = None,
    ) -> None:
        with self._lock:
            self.subnet = IPv4Network(str(subnet))
            self.lease_expiration = expiration
            self.lease_held = True
            if public_ip is not None:
                self.public_ip = str(public_ip)
            if network is not None:
                self.network = IPv4Network(str(network))
        self.metrics.lease_expiry.set(expiration or 0)

    def lease_lost(self) -> None:
        with self._lock:
            self.lease_held = False
        self.metrics.lease_expiry.set(0)

    def set_subnet_env_written(self, path: str, written: bool = True) -> None:
        with self._lock:
            self.subnet_env_path = str(path)
            self.subnet_env_written = written

    def set_peers(
        self,
        in_etcd: int,
        programmed: int,
        skipped: dict[str, tuple[str, str]] | dict[str, str] | int | None = None,
    ) -> None:
        """Peer counts after a pass: leases known, peers programmed, peers skipped.

        ``skipped`` is {subnet: (kind, reason)} or {subnet: reason} (shown by
        `flannelish status`; kinds label ``flannelish_peers_skipped``), or just
        a count when the reasons are only in the daemon's log.
        """
        reasons: dict[str, str] = {}
        kinds: Counter_[str] = Counter_()
        if isinstance(skipped, dict):
            for subnet, why in skipped.items():
                kind, text = why if isinstance(why, tuple) else ("other", why)
                reasons[subnet] = text
                kinds[kind] += 1
        count = len(reasons) if isinstance(skipped, dict) else int(skipped or 0)
        with self._lock:
            for kind in self._skip_kinds - set(kinds):
                self.metrics.peers_skipped.labels(kind).set(0)  # a reason that went away
            self._skip_kinds |= set(kinds)
        for kind, n in kinds.items():
            self.metrics.peers_skipped.labels(kind).set(n)
        with self._lock:
            self.peers_in_etcd = in_etcd
            self.peers_programmed = programmed
            self.skipped_peers = reasons
            self.skipped_count = count
        backend = self.backend or "unknown"
        self.metrics.peers.labels(backend, "programmed").set(programmed)
        self.metrics.peers.labels(backend, "skipped").set(count)

    def set_families(
        self,
        by_family: dict[str, int],
        devices: list[str],
        lease_v6: dict[str, str | None],
        details: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Programmed peers per family ("ipv4", "ipv6"), the overlay devices, our IPv6 half
        and each family's details (the /status `by_family` section)."""
        with self._lock:
            self.peers_by_family, self.devices, self.lease_v6 = by_family, devices, lease_v6
            self.family_details = dict(details or {})
        for family, n in by_family.items():
            self.metrics.peers_family.labels(family).set(n)

    def record_reconcile(self, seconds: float, changes: int, errors: int) -> None:
        """One reconcile pass (call from the reconcile loop's on_pass hook)."""
        now = self._clock()
        with self._lock:
            self.reconcile_ok = errors == 0
            self.last_reconcile = {
                "at": now,
                "seconds": round(seconds, 6),
                "changes": changes,
                "errors": errors,
            }
        self.metrics.reconcile_runs.inc()
        self.metrics.reconcile_duration.observe(seconds)
        if changes:
            self.metrics.reconcile_repairs.inc(changes)
        if errors:
            self.metrics.reconcile_errors.inc(errors)

    def record_etcd_error(self) -> None:
        self.metrics.etcd_errors.inc()

    def record_watch_restart(self) -> None:
        self.metrics.watch_restarts.inc()

    def set_vxlan_rejected(self, packets: int) -> None:
        self.metrics.vxlan_rejected.set(packets)

    def set_bad_leases(self, bad: dict[str, str]) -> None:
        """Keys skipped as bad leases, {key: reason} (the registry's ``bad_leases``)."""
        with self._lock:
            self.bad_leases = dict(bad)
        self.metrics.bad_leases.set(len(bad))

    def set_bad_lease_source(self, source: Callable[[], dict[str, str]]) -> None:
        """Read the bad leases at every /status and /metrics request, e.g.
        ``lambda: {b.key: b.reason for b in registry.bad_leases}`` (cheap: no etcd call)."""
        self._bad_source = source

    def set_wireguard_source(self, source: Callable[[], dict[str, Any]]) -> None:
        """The WireGuard backend's live detail (implementation, key file, per-peer handshakes)."""
        self._wireguard_source = source

    def _wireguard(self) -> dict[str, Any] | None:
        if self._wireguard_source is None:
            return None
        try:
            doc = self._wireguard_source()
        except Exception as exc:  # a status request must not fail on it
            return {"error": str(exc)}
        m = self.metrics
        m.wg_userspace.set(1 if str(doc.get("implementation", "")).startswith("user") else 0)
        m.wg_no_handshake.set(doc.get("peers_without_handshake", 0))
        m.wg_handshake_age.clear()
        m.wg_rx.clear()
        m.wg_tx.clear()
        for peer in doc.get("peers", []):
            label = ",".join(peer.get("allowed_ips") or []) or peer.get("public_key", "?")
            age = peer.get("handshake_age_seconds")
            m.wg_handshake_age.labels(label).set(-1 if age is None else age)
            m.wg_rx.labels(label).set(peer.get("rx_bytes", 0))
            m.wg_tx.labels(label).set(peer.get("tx_bytes", 0))
        return doc

    def set_peer_source(
        self, source: Callable[[], tuple[int, int, dict[str, tuple[str, str]]]]
    ) -> None:
        """Read (in_etcd, programmed, skipped) at every /status and /metrics request, so
        a lease rejected between two passes shows at once (cheap: in-memory tables)."""
        self._peer_source = source

    def _refresh_peers(self) -> None:
        if self._peer_source is None:
            return
        try:
            self.set_peers(*self._peer_source())
        except Exception as exc:  # a report, never a failed scrape
            log.debug("could not read the peer tables: %s", exc)

    def _refresh_bad_leases(self) -> None:
        self._refresh_peers()
        if self._bad_source is None:
            return
        try:
            self.set_bad_leases(self._bad_source())
        except Exception as exc:  # a report, never a failed scrape
            log.debug("could not read the bad leases: %s", exc)

    def set_check(self, name: str, ok: bool, detail: str = "") -> None:
        """An extra readiness condition (e.g. "nftables"); part of /readyz from now on."""
        if name in CORE_CHECKS:
            raise ValueError(f"{name} is a built-in check")
        with self._lock:
            self._extra[name] = Check(name, ok, detail)

    def check_failing(self, name: str) -> bool:
        """True if the extra check `name` is set and currently failing."""
        with self._lock:
            check = self._extra.get(name)
            return check is not None and not check.ok

    # -- readiness -------------------------------------------------------------

    def _etcd_check(self) -> Check:
        if self._probe is None:
            return Check("etcd", True, "no probe configured")
        with self._probe_lock:  # one probe at a time; others reuse its answer
            now = time.monotonic()
            if self._probe_cache and now - self._probe_cache[0] < self._probe_interval:
                return self._probe_cache[1]
            check = self._run_probe()
            self._probe_cache = (time.monotonic(), check)
            return check

    def _run_probe(self) -> Check:
        assert self._probe is not None
        hung = self._probe_thread
        if hung is not None and hung.is_alive():
            # Never stack threads on a hung etcd: the earlier probe has not answered.
            return Check("etcd", False, "an earlier probe is still waiting for etcd")
        outcome: list[BaseException | None] = []

        def target() -> None:
            try:
                self._probe()  # type: ignore[misc]
                outcome.append(None)
            except BaseException as exc:  # reported as the check's detail
                outcome.append(exc)

        # A daemon thread: a hung etcd call must not block the HTTP handler.
        thread = threading.Thread(target=target, name="etcd-probe", daemon=True)
        self._probe_thread = thread
        thread.start()
        thread.join(self._probe_timeout)
        if not outcome:
            self.record_etcd_error()
            return Check("etcd", False, f"no answer within {self._probe_timeout:g}s")
        if outcome[0] is not None:
            self.record_etcd_error()
            return Check("etcd", False, f"{type(outcome[0]).__name__}: {outcome[0]}"[:200])
        return Check("etcd", True, "reachable")

    def _lease_name(self) -> str:
        """The lease's IPv4 subnet, or its IPv6 one on an IPv6-only node (IPv4 half 0.0.0.0/0)."""
        if (self.subnet is None or self.subnet.prefixlen == 0) and self.lease_v6.get("ipv6_subnet"):
            return str(self.lease_v6["ipv6_subnet"])
        return str(self.subnet)

    def checks(self) -> list[Check]:
        now = self._clock()
        with self._lock:
            if not self.lease_held:
                lease = Check("lease", False, "no lease held")
            elif self.lease_expiration is not None and self.lease_expiration <= now:
                lease = Check("lease", False, f"lease for {self._lease_name()} expired")
            else:
                lease = Check("lease", True, self._lease_name())
            if self.reconcile_ok is None:
                rec = Check("reconcile", False, "no reconcile pass yet")
            elif self.reconcile_ok:
                rec = Check("reconcile", True, "last pass succeeded")
            else:
                errors = (self.last_reconcile or {}).get("errors", 0)
                rec = Check("reconcile", False, f"last pass had {errors} error(s)")
            env = Check(
                "subnet-env",
                self.subnet_env_written,
                self.subnet_env_path or "" if self.subnet_env_written else "not written yet",
            )
            extra = list(self._extra.values())
        etcd = self._etcd_check()
        return [lease, etcd, rec, env, *extra]

    def ready(self) -> tuple[bool, list[Check]]:
        checks = self.checks()
        ok = all(c.ok for c in checks)
        self.metrics.ready.set(1 if ok else 0)
        return ok, checks

    def status(self) -> dict[str, Any]:
        """The ``/status`` JSON document."""
        self._refresh_bad_leases()
        ready, checks = self.ready()
        wireguard = self._wireguard()
        with self._lock:
            return {
                "version": STATUS_VERSION,
                "node": self.node,
                "ready": ready,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
                "lease": {
                    "held": self.lease_held,
                    "subnet": str(self.subnet) if self.subnet else None,
                    "network": str(self.network) if self.network else None,
                    "public_ip": self.public_ip,
                    "expiration": self.lease_expiration,
                    **self.lease_v6,
                },
                "backend": self.backend,
                "device": self.device,
                "devices": list(self.devices),
                "subnet_env": {
                    "path": self.subnet_env_path,
                    "written": self.subnet_env_written,
                },
                "peers": {
                    "in_etcd": self.peers_in_etcd,
                    "programmed": self.peers_programmed,
                    "skipped": dict(self.skipped_peers),
                    "skipped_count": self.skipped_count,
                    **({"by_family": dict(self.peers_by_family)} if self.peers_by_family else {}),
                },
                **({"by_family": dict(self.family_details)} if self.family_details else {}),
                "bad_leases": dict(self.bad_leases),
                "last_reconcile": dict(self.last_reconcile) if self.last_reconcile else None,
                "uptime_seconds": round(self._clock() - self.started_at, 3),
                **({"wireguard": wireguard} if wireguard is not None else {}),
                **{key: section() for key, section in self.sections.items()},
            }

    def metrics_text(self) -> bytes:
        self.ready()  # refresh the flannelish_ready gauge
        self._refresh_bad_leases()
        self._wireguard()
        return generate_latest(self.metrics.registry)
