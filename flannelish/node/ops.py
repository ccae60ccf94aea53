"""Node operations wired for the daemon: health server, NodeState and the nftables owner.

Design
------
The daemon (flannelish.daemon.node) should not need to know how readiness,
metrics, masquerading and VXLAN anti-spoofing fit together, so this module
gives it one object with lifecycle calls that map onto its start-up order:

=====================================  ========================================
daemon step                            call
=====================================  ========================================
after the backend is chosen            ``ops = NodeOps(opts, node=..., backend=...,
                                       etcd_probe=...)``
after the lease is bound               ``owners += ops.start(network, lease, ...)``
                                       (returns the nft Owner for the Reconciler)
after subnet.env is written            ``ops.subnet_env_written(path)``
each ``ReconcileLoop`` on_pass         ``ops.on_pass(result, peers_in_etcd)``
first lease snapshot applied           ``ops.peers_synced()``
lease renewed / moved / lost           ``ops.lease_changed(lease)`` / ``ops.lease_lost()``
etcd error / watch re-created          ``ops.state.record_etcd_error()`` /
                                       ``ops.state.record_watch_restart()``
clean shutdown (SIGTERM)               ``ops.stop()``
=====================================  ========================================

The health server runs only when ``healthz_port`` is non-zero (flanneld's
rule).  The nftables table is always created (forward-accept and, unless
``vxlan_allow_any``, anti-spoofing are on by default; masquerading only
with ``ip_masq``) and stays when the daemon stops or crashes, like the device
and the routes (a restarted daemon adopts it); ``flannelish uninstall``
removes all three.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from flannelish.errors import FlannelishError, NotAvailableError
from flannelish.kernel.nft import NftRunner
from flannelish.kernel.nftset import SetElements
from flannelish.node.firewall import NftRules
from flannelish.node.firewall_owner import NftOwner
from flannelish.node.health import HealthServer, NodeState
from flannelish.subnet.lease import Lease

if TYPE_CHECKING:  # annotations only: the daemon imports this module, not the reverse
    import os

    from flannelish.daemon.reconciler import PassResult

log = logging.getLogger("flannelish.node.ops")


@dataclass(frozen=True)
class NodeOpsOptions:
    ip_masq: bool = False
    forward: bool = True  # --iptables-forward-rules
    fully_random: bool = True  # not --ip-masq-fully-random-disable
    vxlan_allow_any: bool = False
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0  # 0: no health server


class NodeOps:
    def __init__(
        self,
        options: NodeOpsOptions,
        *,
        node: str = "",
        backend: str = "",
        device: str | None = None,
        etcd_probe: Callable[[], None] | None = None,
        runner: NftRunner | None = None,
    ) -> None:
        self.options = options
        self.state = NodeState(node=node, backend=backend, device=device, etcd_probe=etcd_probe)
        self.owner: NftOwner | None = None
        self.server: HealthServer | None = None
        self._runner = runner

    def start(
        self,
        network: IPv4Network | str | None,
        lease: Lease,
        *,
        vxlan_port: int | None,
        network6: IPv6Network | str | None = None,
    ) -> list[NftOwner]:
        """Create the nft Owner (for the Reconciler) and start the health server.

        ``vxlan_port`` is None for backends without VXLAN (host-gw): then no
        anti-spoof rule.  ``network``/``network6`` None: that family is off;
        the IPv6 rules (``table ip6 flannelish``) need the lease's
        ``ipv6_subnet`` as well.
        """
        self.lease_changed(lease, network=network)
        # Per family: rules only where the family is on and the lease has its half
        # (an IPv6-only lease has no IPv4 subnet, so no `table ip flannelish`).
        subnet = lease.key.v4 if network is not None else None
        subnet6 = lease.ipv6_subnet if network6 is not None else None
        if subnet is None and subnet6 is None:
            self._start_server()
            return []
        if self._runner is None and shutil.which("nft") is None:
            if self.options.ip_masq:
                raise NotAvailableError(
                    "--ip-masq needs nftables, but the nft command is not installed",
                    "install the nftables package",
                )
            log.warning(
                "nft not found: no forward-accept rules and no VXLAN anti-spoofing on this node"
            )
            self._start_server()
            return []
        rules = NftRules(
            network if subnet is not None else None,
            subnet,
            vxlan_port,
            masq=self.options.ip_masq,
            forward=self.options.forward,
            fully_random=self.options.fully_random,
            allow_any_vxlan=self.options.vxlan_allow_any,
            network6=network6 if subnet6 is not None else None,
            subnet6=subnet6,
            runner=self._runner,
            # The kernel's own sets (not a test's fake nft): elements over nfnetlink.
            elements=SetElements() if self._runner is None else None,
        )
        self.owner = NftOwner(rules)
        self._start_server()
        return [self.owner]

    def _start_server(self) -> None:
        if self.options.healthz_port:
            self.server = HealthServer(
                self.state, self.options.healthz_ip, self.options.healthz_port
            ).start()

    def subnet_env_written(self, path: str | os.PathLike[str]) -> None:
        self.state.set_subnet_env_written(str(path))

    def lease_changed(self, lease: Lease, network: IPv4Network | str | None = None) -> None:
        self.state.set_lease(
            lease.subnet, lease.expiration, public_ip=str(lease.attrs.public_ip), network=network
        )
        if self.owner is None:
            return
        old = self.owner.rules
        subnet = lease.subnet if old.network is not None else None
        subnet6 = lease.ipv6_subnet if old.network6 is not None else None
        if (old.subnet, old.subnet6) != (subnet, subnet6) and (subnet or subnet6):
            # A new subnet changes the masquerade rules; the next pass applies them.
            self.owner.replace_rules(
                NftRules(
                    old.network,
                    subnet,
                    old.vxlan_port,
                    masq=old.masq,
                    forward=old.forward,
                    fully_random=old.fully_random,
                    allow_any_vxlan=old.allow_any_vxlan,
                    network6=old.network6 if subnet6 else None,
                    subnet6=subnet6,
                    runner=old.runner,
                    elements=old.elements,
                )
            )

    def lease_lost(self) -> None:
        self.state.lease_lost()

    def peers_synced(self) -> None:
        if self.owner is not None:
            self.owner.arm()

    def on_pass(
        self,
        result: PassResult,
        peers_in_etcd: int,
        skipped: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        """Feed one reconcile PassResult into readiness and metrics.

        ``skipped``: {subnet: (kind, reason)} of every peer not programmed.
        """
        self.state.record_reconcile(result.seconds, result.changes, result.errors)
        count = len(skipped) if skipped is not None else result.skipped
        programmed = max(peers_in_etcd - count, 0)
        self.state.set_peers(peers_in_etcd, programmed, skipped if skipped is not None else count)
        if self.owner is not None:
            try:
                self.owner.after_pass()  # arms the anti-spoof rule once the set is complete
                if not getattr(result, "full", True) and not self.state.check_failing("nftables"):
                    # A per-event apply or another loop's pass: listing the table
                    # costs O(peers) (an `nft` run and its parse); the table's own
                    # full passes keep this check current.  A failing check is
                    # re-checked, though: at start-up the set fills and the drop
                    # rule arms through events, and readiness must not wait for
                    # the next full pass to see the table complete.
                    return
                rules = self.owner.rules
                table = rules.checked_state()  # one listing for both
                present = rules.matches(table)
                self.state.set_check("nftables", present, "" if present else "table not in place")
                self.state.set_vxlan_rejected(table.rejected_packets if table else 0)
            except FlannelishError as exc:
                self.state.set_check("nftables", False, str(exc))

    def stop(self) -> None:
        """Clean shutdown: stop the health server.

        The nftables table stays, like the device and the routes: masquerade
        and the anti-spoof filter must protect the data path that keeps
        running while the daemon is down.  `flannelish uninstall` removes all three.
        """
        if self.owner is not None:
            log.info("nftables table left in place", extra={"table": "ip flannelish"})
        if self.server is not None:
            self.server.stop()
