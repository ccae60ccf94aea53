"""The daemon's options (from the CLI) and the status it keeps for reporting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flannelish.daemon.reconciler import PassResult
from flannelish.subnet.lease import Lease

if TYPE_CHECKING:
    from flannelish.node.ops import NodeOpsOptions
    from flannelish.subnet.etcdstore import EtcdOptions

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
SOCKET_NAME = "flannelish.sock"


@dataclass
class DaemonOptions:
    etcd: EtcdOptions
    subnet_file: Path = Path(DEFAULT_SUBNET_FILE)
    ifaces: list[str] = field(default_factory=list)
    iface_regexes: list[str] = field(default_factory=list)
    iface_can_reach: str | None = None
    public_ip: str | None = None
    public_ipv6: str | None = None
    ip_masq: bool = False
    renew_margin_minutes: int = 60
    resync_seconds: float = 10.0
    firewall_resync_seconds: float = 5.0  # --iptables-resync: the nftables table's loop
    blackhole_route: bool = False  # --ip-blackhole-route
    net_config_path: Path | None = None  # seeds <prefix>/config when etcd has none
    cni_socket: Path | None = None  # default: <dir of subnet_file>/flannelish.sock
    node_ops: NodeOpsOptions | None = None  # health, metrics, nftables; None: none of them
    # Once every loop has made its first full pass, move what lives then
    # (modules, leases, the kernel state) out of the cyclic GC's reach (a full
    # collection otherwise scans all of it and stops every thread for tens of
    # ms at 5000 peers, lease events included), and return the start-up peak's
    # free heap to the system.  The CLI sets it; in-process tests do not.
    freeze_gc_after_sync: bool = False
    policy: bool = False  # network policy: endpoints, table inet flannelish-policy

    @property
    def socket_path(self) -> Path:
        return self.cni_socket or self.subnet_file.parent / SOCKET_NAME


@dataclass
class NodeStatus:
    """What health/readiness reporting needs to know."""

    lease: Lease | None = None
    subnet_env_written: bool = False
    last_pass: PassResult | None = None
    peers: int = 0
