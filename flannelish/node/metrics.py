"""The daemon's Prometheus metrics: their names, help texts and labels.

The names are part of the operator interface (dashboards and alerts use
them); :class:`flannelish.node.health.NodeState` owns one :class:`Metrics`
per node and is the only writer.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The daemon's Prometheus metrics (names are part of the operator interface)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.peers = Gauge(
            "flannelish_peers",
            "Peers by backend and state",
            ["backend", "state"],
            registry=registry,
        )
        self.peers_family = Gauge(
            "flannelish_peers_programmed_family",
            "Programmed peers by address family (dual-stack peers count in both)",
            ["family"],
            registry=registry,
        )
        self.reconcile_runs = Counter(
            "flannelish_reconcile_runs", "Reconcile passes run", registry=registry
        )
        self.reconcile_duration = Histogram(
            "flannelish_reconcile_duration_seconds",
            "Duration of one reconcile pass",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "flannelish_reconcile_errors", "Kernel operations that failed", registry=registry
        )
        self.reconcile_repairs = Counter(
            "flannelish_reconcile_repairs",
            "Kernel objects created, replaced or deleted to match the leases",
            registry=registry,
        )
        self.lease_expiry = Gauge(
            "flannelish_lease_expiry_timestamp_seconds",
            "Unix time our lease expires (0: reservation or no lease)",
            registry=registry,
        )
        self.etcd_errors = Counter(
            "flannelish_etcd_request_errors", "etcd requests that failed", registry=registry
        )
        self.watch_restarts = Counter(
            "flannelish_watch_restarts", "Lease watch re-creations", registry=registry
        )
        self.ready = Gauge("flannelish_ready", "1 if the node is ready", registry=registry)
        self.peers_skipped = Gauge(
            "flannelish_peers_skipped",
            "Peer leases not programmed, by reason (see `flannelish status` for each one)",
            ["reason"],
            registry=registry,
        )
        self.vxlan_rejected = Gauge(
            "flannelish_vxlan_rejected_packets",
            "VXLAN packets from non-peers dropped by the anti-spoof rule",
            registry=registry,
        )
        self.health_rejected = Counter(
            "flannelish_health_connections_rejected",
            "Health-port connections answered 503 because max_connections were busy",
            registry=registry,
        )
        self.health_evicted = Counter(
            "flannelish_health_connections_evicted",
            "Unfinished health-port requests closed to admit a new connection",
            registry=registry,
        )
        self.health_timeouts = Counter(
            "flannelish_health_request_timeouts",
            "Health-port connections closed for not sending a request in time",
            registry=registry,
        )
        self.wg_handshake_age = Gauge(
            "flannelish_wireguard_peer_handshake_age_seconds",
            "Seconds since the latest WireGuard handshake with a peer (-1: none yet)",
            ["peer"],
            registry=registry,
        )
        self.wg_rx = Gauge(
            "flannelish_wireguard_peer_receive_bytes",
            "Bytes received from a WireGuard peer",
            ["peer"],
            registry=registry,
        )
        self.wg_tx = Gauge(
            "flannelish_wireguard_peer_transmit_bytes",
            "Bytes sent to a WireGuard peer",
            ["peer"],
            registry=registry,
        )
        self.wg_no_handshake = Gauge(
            "flannelish_wireguard_peers_without_handshake",
            "WireGuard peers that never completed a handshake",
            registry=registry,
        )
        self.wg_userspace = Gauge(
            "flannelish_wireguard_userspace",
            "1 if flannel-wg is wireguard-go (userspace), 0 if kernel WireGuard",
            registry=registry,
        )
        self.bad_leases = Gauge(
            "flannelish_bad_leases",
            "Keys under <prefix>/subnets whose value is not a usable lease (skipped)",
            registry=registry,
        )
