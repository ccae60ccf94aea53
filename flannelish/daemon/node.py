"""The node daemon's lifecycle: start-up order, running threads, clean stop.

Start-up (docs/flannel-compat.md §10, minus iptables): network config from etcd (retried
until it exists) → external interface → backend device (before the lease, so
the lease can carry the VTEP MAC) → lease (preferring the subnet in our old
subnet.env) → device address → node operations (health server, nftables
owner; flannelish.node.ops) → subnet.env → CNI socket → peer watch, one
reconcile loop per owner (the backend's never waits for a slower one),
kernel change monitor, lease keeper and config watch (the network config is
re-read every resync interval; live backend options such as VXLAN
DirectRouting are applied without a restart, flannelish.daemon.configwatch).
No pass runs before the watch's first snapshot: an empty peer table then
means "unknown", not "no peers".

Threads report fatal errors through :meth:`NodeDaemon.fail`; the main thread
then stops everything and re-raises, so the CLI prints one line and exits
with the error's code.  A stop request (SIGTERM/SIGINT) stops the threads
but never touches the kernel: pods keep talking while the daemon restarts,
and the restarted daemon adopts the device, its MAC and the same lease.

This module is longer than the usual ~450 lines on purpose: it is the one
place where every collaborator is started and stopped, in order, so the
start-up sequence above can be read in one file.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flannelish.backends import get_backend_class
from flannelish.backends.base import Backend, BackendContext, ExternalInterface
from flannelish.cni.server import CniServer
from flannelish.daemon.admission import AdmissionRules
from flannelish.daemon.families import (
    admission_rules,
    family_counts,
    family_report,
    subnet_env,
    underlay_for,
)
from flannelish.daemon.flanneld_flags import ensure_blackhole, seed_config
from flannelish.daemon.identity import load_or_create
from flannelish.daemon.loop import ReconcileLoop
from flannelish.daemon.monitors import start_monitors
from flannelish.daemon.options import DaemonOptions, NodeStatus
from flannelish.daemon.peers import PeerTable, deleted_entry_wanted, skipped_report
from flannelish.daemon.reconciler import PassResult, Reconciler
from flannelish.errors import ConfigError, EtcdError, FlannelishError
from flannelish.kernel.monitor import Deleted
from flannelish.kernel.netlink import Netlink
from flannelish.kernel.resources import Owner
from flannelish.node.sdnotify import notify
from flannelish.subnet.keys import LeaseKey
from flannelish.subnet.lease import Event, Lease, LeaseAttrs
from flannelish.subnet_env import previous_subnets, write_subnet_env

if TYPE_CHECKING:
    # For annotations only: at run time these are imported where they are used,
    # so importing this module loads neither the etcd client nor the health server.
    from flannelish.daemon.configwatch import ConfigWatch
    from flannelish.node.ops import NodeOps
    from flannelish.subnet.config import NetworkConfig
    from flannelish.subnet.keeper import LeaseKeeper
    from flannelish.subnet.manager import SubnetManager

log = logging.getLogger("flannelish.daemon")


class NodeDaemon:
    def __init__(
        self,
        options: DaemonOptions,
        netlink: Netlink | None = None,
        manager: SubnetManager | None = None,
        kernel_notifications: bool = True,
    ) -> None:
        self.options = options
        self._netlink = netlink
        self._manager = manager
        self._kernel_notifications = kernel_notifications  # off in root-free unit tests
        self.stop_event = threading.Event()
        self.status = NodeStatus()
        self.started = threading.Event()  # set once the data path is up and threads run
        self._fatal: BaseException | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closers: list[Callable[[], object]] = []
        self.backend: Backend | None = None
        self.peers = PeerTable()
        self.loop: ReconcileLoop | None = None  # the backend's
        self.loops: list[ReconcileLoop] = []  # the backend's, then one per extra owner
        self.ops: NodeOps | None = None  # when options.node_ops is set
        self._node_id: str | None = None  # flannelish.daemon.identity, set at start
        self._advertised: LeaseAttrs | None = None  # last backend attributes re-put into the lease
        self._backend_skipped: frozenset[LeaseKey] = frozenset()  # see _skips_changed
        self._owners: Sequence[Owner] = ()  # besides the backend, e.g. the nftables table
        self.config_watch: ConfigWatch | None = None
        self._config: NetworkConfig | None = None  # the network config the daemon started with
        self._keeper: LeaseKeeper | None = None
        self._gc_frozen = False
        self._owners_started = False  # see _backend_passed
        self.policy: Any = None  # flannelish.policy.agent.PolicyAgent when options.policy
        self._cni_after: Callable[..., Any] | None = None

    # -- wiring ------------------------------------------------------------------
    def _make_manager(self) -> SubnetManager:
        from flannelish.subnet.manager import SubnetManager
        from flannelish.subnet.registry import EtcdRegistry

        return SubnetManager(EtcdRegistry(self.options.etcd))

    def _make_netlink(self) -> Netlink:
        from flannelish.kernel.rawnetlink import RawNetlink

        return RawNetlink()

    def fail(self, exc: BaseException) -> None:
        """Called from any thread: stop the daemon and exit with this error."""
        with self._lock:
            if self._fatal is None:
                self._fatal = exc
        self.stop_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    # -- run ------------------------------------------------------------------------
    def run(self) -> None:
        """Run until stop() or a fatal error (re-raised here)."""
        try:
            self._start()
            while not self.stop_event.wait(0.5):
                for loop in self.loops:
                    if loop.failure is not None:
                        self.fail(loop.failure)
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise self._fatal

    def _preflight(self) -> None:
        """Fail before touching etcd or the kernel if subnet.env cannot be written."""
        directory = self.options.subnet_file.parent
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            raise ConfigError(
                f"--subnet-file directory {directory} is not writable", exc.strerror
            ) from None

    def _start(self) -> None:
        opts = self.options
        self._preflight()
        nl = self._netlink = self._netlink or self._make_netlink()
        if self._manager is None:
            self._manager = self._make_manager()
            registry = getattr(self._manager, "registry", None)
            if registry is not None and hasattr(registry, "close"):
                self._closers.append(registry.close)  # runs last: closers go in reverse
        manager = self._manager
        if opts.net_config_path is not None:
            seed_config(manager.registry, opts.net_config_path)
        config = manager.get_network_config(wait=True, stop=self.stop_event)
        if self.stop_event.is_set() or config is None:
            return
        ext = underlay_for(nl, opts, config)
        backend = self._make_backend(nl, ext, config)
        backend.setup()
        self._node_id = load_or_create(opts.subnet_file.parent)
        try:  # an etcd overloaded by a cluster booting at once is waited for, not fatal
            lease = manager.acquire(
                self._lease_attrs(),
                LeaseKey(*previous_subnets(opts.subnet_file)),
                wait=True,
                stop=self.stop_event,
                keep_listing=True,  # the lease watch starts from it (no second listing)
            )
        except EtcdError:
            if self.stop_event.is_set():
                return
            raise
        log.info("acquired lease", extra={"subnet": str(lease.key), "public_ip": ext.public_ip})
        self._bind(lease)
        self._ensure_blackhole()
        self._start_node_ops(manager, ext, config, lease)
        self._write_subnet_env(config)
        self._start_policy(manager, ext, lease)
        self._start_cni_server()
        self._start_threads(manager, lease)
        self.started.set()
        notify("READY=1\nSTATUS=lease " + str(lease.key))

    def _ensure_blackhole(self, old: Lease | None = None) -> None:
        lease = self.status.lease
        if self.options.blackhole_route and lease is not None and self._netlink is not None:
            ensure_blackhole(self._netlink, lease, old)

    def _start_node_ops(
        self, manager: SubnetManager, ext: ExternalInterface, config: NetworkConfig, lease: Lease
    ) -> None:
        """Health server, metrics and the nftables table (flannelish.node.ops)."""
        if self.options.node_ops is None:
            return
        from flannelish.node.ops import NodeOps

        backend = self.backend
        registry = getattr(manager, "registry", None)
        self.ops = NodeOps(
            self.options.node_ops,
            node=str(ext.public_ip if config.enable_ipv4 else ext.public_ipv6),
            backend=config.backend_type,
            device=getattr(backend, "name", None),
            etcd_probe=(lambda: registry.get_config()) if registry is not None else None,
        )
        self._closers.append(self.ops.stop)
        if registry is not None:
            self.ops.state.set_bad_lease_source(
                lambda: {b.key: b.reason for b in registry.bad_leases}
            )
        self.ops.state.set_peer_source(self._peer_report)
        wireguard = getattr(backend, "status", None)
        if wireguard is not None:  # the WireGuard backend's live detail (no private key in it)
            self.ops.state.set_wireguard_source(wireguard)
        # The nft table is one more Owner for the reconciler (re-asserted, peer set diffed).
        self._owners = self.ops.start(
            config.network if getattr(config, "enable_ipv4", True) else None,
            lease,
            vxlan_port=getattr(backend, "port", None),
            network6=config.ipv6_network if getattr(config, "enable_ipv6", False) else None,
        )

    def _make_backend(self, nl: Netlink, ext: ExternalInterface, config: NetworkConfig) -> Backend:
        cls = get_backend_class(config.backend_type)
        state_dir = self.options.subnet_file.parent
        backend: Backend = cls(BackendContext(nl, ext, config, state_dir))
        self.backend = backend
        self._config = config
        return backend

    def _bind(self, lease: Lease) -> None:
        assert self.backend is not None
        self.backend.bind_lease(lease)
        self.status.lease = lease
        if self.peers.rules is None:
            self.peers.own_subnet = lease.key
            self.peers.set_rules(self._admission_rules(self.backend))
        else:
            self.peers.set_own_subnet(lease.key)

    def _admission_rules(self, backend: Backend) -> AdmissionRules:
        assert self._config is not None  # _make_backend() stored it
        return admission_rules(self._config, backend, self._own_key)

    def _own_key(self) -> LeaseKey | None:
        return self.status.lease.key if self.status.lease is not None else None

    def _write_subnet_env(self, config: NetworkConfig) -> None:
        assert self.backend is not None and self.status.lease is not None
        key, mtu = self.status.lease.key, self.backend.mtu
        env = subnet_env(config, key, mtu, self.options.ip_masq)
        write_subnet_env(self.options.subnet_file, env)
        self.status.subnet_env_written = True
        if self.ops is not None:
            self.ops.subnet_env_written(self.options.subnet_file)
        log.info("wrote subnet file", extra={"path": self.options.subnet_file})

    def _start_cni_server(self) -> None:
        path = self.options.socket_path
        try:
            server = CniServer(str(path), after=self._cni_after)
            server.start()
        except (OSError, FlannelishError) as exc:
            log.warning("CNI socket %s not started: %s", path, exc)
            return
        self._closers.append(server.stop)

    def _start_policy(self, manager: SubnetManager, ext: ExternalInterface, lease: Lease) -> None:
        """Network policy: table applied and endpoints re-bound before the CNI socket opens."""
        store = getattr(getattr(manager, "registry", None), "store", None)
        if not self.options.policy or store is None:
            return
        from flannelish.policy.daemon import start_policy

        self.policy, self._cni_after = start_policy(
            store,
            str(ext.public_ip),
            self.options.subnet_file.parent,
            lease.lease_id,
            self.ops,
            self.options.resync_seconds,
        )
        self._closers.append(self.policy.stop)

    def _start_threads(self, manager: SubnetManager, lease: Lease) -> None:
        assert self.backend is not None
        # One loop per owner: the overlay's convergence never waits for a slower
        # owner (the nftables table is changed through `nft` subprocesses).
        self.loop = self._make_loop(self.backend, self._after_pass)
        self.loops = [self.loop]
        for owner in self._owners:
            self.loops.append(self._make_loop(owner, self._after_owner_pass))
        for loop in self.loops:
            loop.start()
            self._closers.append(loop.stop)
        self._spawn("lease-watch", self._watch, manager, lease)
        if self._kernel_notifications:
            self._start_monitor()
        # Backends whose state the kernel monitor cannot see (WireGuard's UAPI) watch it themselves.
        start_watch = getattr(self.backend, "start_watch", None)
        if start_watch is not None:
            loop = self.loop
            self._closers.append(start_watch(lambda: loop.trigger(check_base=True)))
        self._start_keeper(manager, lease)
        self._start_config_watch(manager)

    def _start_config_watch(self, manager: SubnetManager) -> None:
        """Re-read the network config every resync; hand changes to the running backend."""
        from flannelish.daemon.configwatch import ConfigWatch

        self.config_watch = ConfigWatch(
            lambda: manager.get_network_config(wait=False),
            self._config,
            self.backend,
            lambda: self._trigger_all(check_base=True),
            self.options.resync_seconds,
        )
        self._spawn("config-watch", self.config_watch.run, self.stop_event)

    def _make_loop(self, owner: Owner, on_pass: Callable[[PassResult], None]) -> ReconcileLoop:
        backend_loop = owner is self.backend
        return ReconcileLoop(
            Reconciler([owner]),
            self.peers.snapshot if backend_loop else self._programmed_peers,
            self.options.resync_seconds if backend_loop else self.options.firewall_resync_seconds,
            on_pass,
            ready=self.peers.synced.is_set if backend_loop else self._backend_passed,
            name=f"reconcile-{type(owner).__name__}",
            # Every loop applies a lease event to that one peer (the nftables
            # owner: one element added or deleted), never a pass over all.
            lookup=self.peers.get if backend_loop else self._programmed_peer,
            # The backend's events are applied in the lease-watch thread when its
            # loop is idle (the nft loop's run `nft`: they stay in their thread).
            inline=backend_loop,
        )

    def _backend_passed(self) -> bool:
        """The other owners' loops start after the backend's first pass.

        The routes carry the traffic; on a cold start with 5000 peers the
        nftables owner's first pass, run alongside, competed for the GIL and
        the two CPUs and delayed the last route by ~0.5 s.  (The anti-spoof
        rule arms after the set's own first pass either way.)
        """
        return self.loop is not None and self.loop.passes > 0

    def _programmed_peers(self) -> list[Lease]:
        """Admitted peers the backend did not skip (the anti-spoof set lists only those)."""
        skipped = self.loop.reconciler.skipped if self.loop is not None else {}
        return [p for p in self.peers.snapshot() if p.key not in skipped]

    def _programmed_peer(self, key: LeaseKey) -> Lease | None:
        """One peer of _programmed_peers() (the loops run apart: a peer the backend
        skips after this look-up leaves the set at the table's next pass)."""
        peer = self.peers.get(key)
        if peer is None or self.loop is None or key in self.loop.reconciler.skipped:
            return None
        return peer

    def _peer_report(self) -> tuple[int, int, dict[str, tuple[str, str]]]:
        """(leases known, peers programmed, {subnet: (kind, reason)} of the others)."""
        skipped = self.skipped_peers()
        # Skipped by the reconciler: admitted, so already counted in self.peers.
        admitted_but_skipped = len(self.loop.reconciler.skipped) if self.loop is not None else 0
        known = len(self.peers) + len(skipped) - admitted_but_skipped
        return known, max(known - len(skipped), 0), skipped

    def skipped_peers(self) -> dict[str, tuple[str, str]]:
        """Every peer lease not programmed: {subnet: (kind, reason)}."""
        registry = getattr(self._manager, "registry", None)
        skipped = self.loop.reconciler.skipped if self.loop is not None else {}
        return skipped_report(self.peers, getattr(registry, "bad_leases", ()), skipped)

    def _trigger_all(self, check_base: bool = False) -> None:
        for loop in self.loops:
            loop.trigger(check_base=check_base)

    def _spawn(self, name: str, target: Callable[..., object], *args: object) -> None:
        def body() -> None:
            try:
                target(*args)
            except BaseException as exc:
                if not self.stop_event.is_set():
                    log.error("%s failed: %s", name, exc)
                    self.fail(exc)

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch(self, manager: SubnetManager, lease: Lease) -> None:
        # The keeper may move us to another subnet; that one is never a peer.
        own = lambda: self._own_key() or lease.key  # noqa: E731
        for batch in manager.watch_leases(self.stop_event, exclude=own):
            self._on_batch(batch)
            # The watch keeps its last batch while it waits for the next: after
            # start-up one event per peer, for as long as the cluster is quiet.
            batch.clear()

    def _on_batch(self, batch: list[Event]) -> None:
        first = not self.peers.synced.is_set()
        changed = self.peers.apply(batch)
        if first:
            # The first pass after the snapshot also checks the base objects.
            self._trigger_all(check_base=True)
        elif changed:
            for loop in self.loops:
                loop.notify(changed)  # only these peers: no pass over the others
        else:
            self._report()  # e.g. a bad lease was rejected: status shows it
        if first and self.ops is not None:
            self.ops.peers_synced()
        self.status.peers = len(self.peers)

    def _start_monitor(self) -> None:
        """Kernel notifications about our objects re-run the loops (flannelish.daemon.monitors)."""
        assert self.loop is not None
        for monitor in start_monitors(
            self.loop, self.loops[1:], self.backend, self._deleted_entry_wanted
        ):
            self._closers.append(monitor.stop)

    def _deleted_entry_wanted(self, dst: Deleted) -> bool:
        own = self.status.lease
        if own is not None and dst == own.subnet:
            return True  # our own subnet: the --ip-blackhole-route route
        config = self._config
        if config is None:
            return True
        return deleted_entry_wanted(self.peers, config.subnet_len, dst, config.ipv6_subnet_len)

    def _start_keeper(self, manager: SubnetManager, lease: Lease) -> None:
        from flannelish.subnet.keeper import LeaseKeeper

        keeper = LeaseKeeper(
            manager,
            lease,
            self.options.renew_margin_minutes * 60,
            self._lease_changed,
            on_fatal=self._lease_fatal,
            # Also GET our key every resync: notices an etcd recreated without its data.
            check_interval_s=self.options.resync_seconds,
        )
        keeper.start()
        self._closers.append(keeper.stop)
        self._keeper = keeper

    def _lease_fatal(self, exc: BaseException) -> None:
        if self.ops is not None:
            self.ops.lease_lost()
        self.fail(exc)

    def _lease_changed(self, lease: Lease) -> None:
        old = self.status.lease
        if old is not None and old.key != lease.key:
            log.warning(
                "lease moved to another subnet", extra={"old": str(old.key), "new": str(lease.key)}
            )
            self._bind(lease)
            assert self._config is not None  # set before the keeper that calls us starts
            self._ensure_blackhole(old)
            self._write_subnet_env(self._config)
            self._trigger_all(check_base=True)
        self.status.lease = lease
        if self.policy is not None:
            self.policy.lease_changed(lease.lease_id)
        if self.ops is not None:
            self.ops.lease_changed(lease)

    def _report(self, table_pass: bool = False) -> None:
        """Readiness/metrics see one combined pass: errors of every loop, the backend's skips.

        Called after every apply and pass, so it costs O(skipped peers), not
        O(peers).  ``table_pass``: a full pass of the nftables loop, after which
        the table is listed for its check (in that loop's thread, never the
        backend's: a listing of 5000 elements would hold up lease events).
        """
        if self.ops is None or self.status.last_pass is None:
            return
        with self._lock:  # loops finish passes in their own threads
            results = [loop.last for loop in self.loops if loop.last is not None]
            combined = dataclasses.replace(
                self.status.last_pass,
                errors=sum(r.errors for r in results),
                changes=sum(r.changes for r in results),
                full=table_pass,  # NodeOps.on_pass lists the nft table after full passes only
            )
            known, _, skipped = self._peer_report()
            self.ops.on_pass(combined, known, skipped)
            v4, v6 = self.peers.family_counts()
            backend_skipped = self.loop.reconciler.skipped if self.loop is not None else {}
            s4, s6 = family_counts(k for k in backend_skipped if self.peers.get(k) is not None)
            programmed = (max(v4 - s4, 0), max(v6 - s6, 0))
            report = family_report(self.backend, self._config, self.status.lease, programmed)
            self.ops.state.set_families(*report)

    def _lease_attrs(self) -> LeaseAttrs:
        """What we advertise: the backend's attributes and our node identity."""
        assert self.backend is not None
        return dataclasses.replace(self.backend.lease_attrs(), node_id=self._node_id)

    def _skips_changed(self) -> None:
        """Peers the backend started or stopped skipping (a foreign route in the way,
        or gone) go to the other loops at once: the anti-spoof set lists only
        programmed peers, not until the table's next pass."""
        if self.loop is None:
            return
        with self._lock:
            now = frozenset(self.loop.reconciler.skipped)
            changed, self._backend_skipped = now ^ self._backend_skipped, now
        if changed:
            for loop in self.loops[1:]:
                loop.notify(changed)

    def _after_owner_pass(self, result: PassResult) -> None:
        self._report(table_pass=result.full)
        if result.full:
            self._settle_after_sync()

    def _settle_after_sync(self) -> None:
        """Once every loop has passed: see DaemonOptions.freeze_gc_after_sync."""
        if self._gc_frozen or not self.options.freeze_gc_after_sync:
            return
        if not all(loop.passes for loop in self.loops):
            return
        self._gc_frozen = True
        gc.freeze()
        release_free_heap()

    def _after_pass(self, result: PassResult) -> None:
        self.status.last_pass = result
        if not self._owners_started:
            self._owners_started = True
            for loop in self.loops[1:]:
                loop.trigger(check_base=True)  # see _backend_passed
        self._skips_changed()
        self._report()
        if result.full:  # every resync, and at once when a route of ours was deleted
            self._settle_after_sync()
            self._ensure_blackhole()
        lease = self.status.lease
        if self.backend is None or lease is None:
            return
        attrs = self._lease_attrs()
        # Once per new set of attributes: a failing or no-op renew must not repeat every pass.
        if attrs != lease.attrs and attrs != self._advertised and self._manager is not None:
            self._advertised = attrs
            # The device was rebuilt with different attributes: advertise them.
            log.info("advertising new backend attributes", extra={"subnet": str(lease.key)})
            try:
                self.status.lease = self._manager.renew(dataclasses.replace(lease, attrs=attrs))
            except FlannelishError as exc:
                log.warning("cannot update lease attributes: %s", exc)

    def _shutdown(self) -> None:
        self.stop_event.set()
        for close in reversed(self._closers):
            try:
                close()
            except Exception as exc:  # shutdown must go on; report and continue
                log.warning("error while stopping: %s", exc)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._netlink is not None and hasattr(self._netlink, "close"):
            self._netlink.close()
        if self.status.lease is not None:  # only once there is a data path to leave
            log.info("stopped; data path left in place", extra={"pid": os.getpid()})


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim).

    The start-up sync allocates far more than the daemon then keeps (listings,
    netlink messages, the nft transaction text); without this the freed peak
    stayed in RSS: ~1.6 MB at 5000 peers.  Elsewhere (musl) it does nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
