"""The lab's state file: everything `lab up` created, so anything can undo it.

``<state dir>/state.json`` is rewritten (atomically) after every step of
`lab up`, so after a crash half-way through, `lab down` still knows every
namespace and process that exists.  Processes are recorded with their start
time and command line, so a recycled PID is never mistaken for ours.

Phases: ``building`` (an `up` is running or crashed), ``up``, ``failed``
(torn down after an error; only the logs are left).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flannelish.errors import ConfigError, FlannelishError
from flannelish.lab import names

STATE_FILE = "state.json"
FORMAT_VERSION = 1


@dataclass
class ProcRecord:
    """A process we started: enough to recognise it later (see procs.is_ours)."""

    role: str
    pid: int
    starttime: int  # /proc/<pid>/stat field 22, clock ticks since boot
    boot_id: str
    cmdline: list[str]
    log: str = ""


@dataclass
class PodState:
    name: str  # node1-pod1
    node: str
    netns: str
    container_id: str
    ip: str = ""  # without prefix length; the IPv6 address in an IPv6-only lab
    ifname: str = "eth0"
    attached: bool = False
    namespace: str = ""  # network policy: the pod's namespace and labels (lab up --pods)
    pod_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ip6: str = ""  # the pod's IPv6 address (dual and ipv6 labs)

    def addr(self, family: int) -> str:
        """The pod's address of IP version `family`, or ''."""
        return self.ip6 if family == 6 else ("" if self.ip == self.ip6 else self.ip)


@dataclass
class NodeState:
    name: str
    netns: str
    ip: str
    dir: str
    subnet_file: str
    netconf: str
    daemon: ProcRecord | None = None
    subnet: str = ""
    mtu: int = 0
    vtep_mac: str = ""
    healthz_port: int = 0  # the daemon's health server, inside the node namespace
    ip6: str = ""  # public IPv6 address on the underlay (dual and ipv6 labs)
    subnet6: str = ""  # the node's IPv6 pod subnet

    def addr(self, family: int) -> str:
        """The node's public address of IP version `family`, or ''."""
        return self.ip6 if family == 6 else ("" if self.ip == self.ip6 else self.ip)

    def subnet_of(self, family: int) -> str:
        return self.subnet6 if family == 6 else self.subnet


@dataclass
class LabSpec:
    name: str = names.DEFAULT_NAME
    nodes: int = 3
    pods_per_node: int = 2
    backend: str = "vxlan"
    network: str = str(names.POD_NETWORK)
    subnet_len: int = 24
    vni: int = names.VNI
    port: int = names.VXLAN_PORT
    policy: bool = False  # daemons run with --policy
    pods: list[dict[str, Any]] = field(
        default_factory=list
    )  # lab up --pods: {name, namespace, labels, node}
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # namespace -> labels
    ip_family: str = "ipv4"  # lab up --ip-family: ipv4, dual or ipv6
    network6: str = str(names.POD_NETWORK6)
    subnet_len6: int = names.POD_SUBNET_LEN6

    @property
    def families(self) -> tuple[int, ...]:
        return names.families_of(self.ip_family)

    def tunnel_port(self, family: int | None = None) -> int:
        """The UDP port of the lab's tunnel for IP version `family` (default: the lab's
        first): VXLAN's, or the family's WireGuard device's listen port."""
        if self.backend != "wireguard":
            return self.port
        return names.wireguard_port(family or self.families[0])

    def validate(self) -> LabSpec:
        names.validate_lab_name(self.name)
        if not 1 <= self.nodes <= names.MAX_NODES:
            raise ConfigError(f"--nodes must be between 1 and {names.MAX_NODES}, not {self.nodes}")
        if not 0 <= self.pods_per_node <= names.MAX_PODS_PER_NODE:
            raise ConfigError(
                f"--pods-per-node must be between 0 and {names.MAX_PODS_PER_NODE}, "
                f"not {self.pods_per_node}"
            )
        if self.backend not in names.BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r}; expected {', '.join(names.BACKENDS)}"
            )
        if self.ip_family not in names.IP_FAMILIES:
            raise ConfigError(
                f"unknown --ip-family {self.ip_family!r}; expected {', '.join(names.IP_FAMILIES)}"
            )
        return self

    def network_config(self) -> dict[str, Any]:
        """The Flannel network config JSON the lab writes with `flannelish config put`."""
        backend: dict[str, Any] = {"Type": self.backend}
        if self.backend == "vxlan":
            backend.update({"VNI": self.vni, "Port": self.port})
        conf: dict[str, Any] = {"Backend": backend}
        if 4 in self.families:
            conf.update({"Network": self.network, "SubnetLen": self.subnet_len})
        else:
            conf["EnableIPv4"] = False
        if 6 in self.families:
            conf["EnableIPv6"] = True
            conf.update({"IPv6Network": self.network6, "IPv6SubnetLen": self.subnet_len6})
        return conf


@dataclass
class LabState:
    spec: LabSpec
    dir: str
    phase: str = "building"
    builder_pid: int = 0
    created: float = field(default_factory=time.time)
    underlay_netns: str = ""
    netns: list[str] = field(default_factory=list)  # every namespace we created, in order
    etcd: ProcRecord | None = None
    etcd_endpoint: str = ""
    nodes: list[NodeState] = field(default_factory=list)
    pods: list[PodState] = field(default_factory=list)
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def procs(self) -> list[ProcRecord]:
        found = [n.daemon for n in self.nodes if n.daemon is not None]
        return [*found, self.etcd] if self.etcd is not None else found

    def node(self, name: str) -> NodeState | None:
        return next((n for n in self.nodes if n.name == name), None)

    def pod(self, name: str) -> PodState | None:
        return next((p for p in self.pods if p.name == name), None)

    def pods_of(self, node: str) -> list[PodState]:
        return [p for p in self.pods if p.node == node]

    def target_netns(self, target: str) -> str:
        """Namespace for `lab exec TARGET`: a node, a pod, or `underlay`."""
        if target in ("ul", "underlay"):
            return self.underlay_netns
        found = self.node(target) or self.pod(target)
        if found is None:
            known = ", ".join(
                ["underlay"] + [n.name for n in self.nodes] + [p.name for p in self.pods]
            )
            raise ConfigError(
                f"no node or pod named {target!r} in lab {self.spec.name!r}", f"known: {known}"
            )
        return found.netns

    def node_env(self, target: str) -> dict[str, str]:
        """The settings `lab exec TARGET` puts in the command's environment.

        Inside a node, the node daemon's own flags as ``FLANNELD_*`` variables (as
        an operator sets them on a real node), so `flannelish status`, `doctor`,
        `leases` and `curl localhost:$FLANNELD_HEALTHZ_PORT/metrics` work
        unchanged; inside a pod or the underlay, only the lab's etcd.
        """
        env: dict[str, str] = {}
        if self.etcd_endpoint:
            env["FLANNELD_ETCD_ENDPOINTS"] = self.etcd_endpoint
        node = self.node(target)
        if node is None:
            return env
        env.update(
            {
                "FLANNELD_SUBNET_FILE": node.subnet_file,
                "FLANNELD_IFACE": "eth0",
                "FLANNELD_IP_MASQ": "true",
                "FLANNELISH_LAB_NODE": node.name,
            }
        )
        if node.addr(4):
            env["FLANNELD_PUBLIC_IP"] = node.addr(4)
        if node.ip6:
            env["FLANNELD_PUBLIC_IPV6"] = node.ip6
        if node.healthz_port:
            env["FLANNELD_HEALTHZ_PORT"] = str(node.healthz_port)
        if self.spec.backend == "wireguard":
            # The daemon's own key file (doctor checks it), as `lab up` started it.
            env["WIREGUARD_KEY_FILE"] = str(Path(node.subnet_file).parent / "wgkey")
        return env

    # -- persistence ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LabState:
        def proc(raw: dict[str, Any] | None) -> ProcRecord | None:
            return ProcRecord(**raw) if raw else None

        nodes = [
            NodeState(**{**raw, "daemon": proc(raw.get("daemon"))}) for raw in doc.get("nodes", [])
        ]
        return cls(
            spec=LabSpec(**doc["spec"]),
            dir=doc["dir"],
            phase=doc.get("phase", "building"),
            builder_pid=doc.get("builder_pid", 0),
            created=doc.get("created", 0.0),
            underlay_netns=doc.get("underlay_netns", ""),
            netns=list(doc.get("netns", [])),
            etcd=proc(doc.get("etcd")),
            etcd_endpoint=doc.get("etcd_endpoint", ""),
            nodes=nodes,
            pods=[PodState(**raw) for raw in doc.get("pods", [])],
            error=doc.get("error", ""),
            timings=dict(doc.get("timings", {})),
            version=doc.get("version", FORMAT_VERSION),
        )

    def save(self) -> None:
        """Atomic rewrite: a crash leaves either the old or the new file, never half of one."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, self.path / STATE_FILE)


def load_state(directory: Path) -> LabState | None:
    """The recorded state, or None when there is no lab in that directory."""
    path = directory / STATE_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FlannelishError(f"cannot read lab state {path}", str(exc)) from exc
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise FlannelishError(f"lab state {path} has an unknown format; remove the directory")
    try:
        return LabState.from_dict(doc)
    except (KeyError, TypeError) as exc:
        raise FlannelishError(f"lab state {path} is damaged", str(exc)) from exc


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise `up`/`down` of one lab: an exclusive flock on its directory."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FlannelishError(
                f"another `flannelish lab` command is working on {directory}; try again shortly"
            ) from None
        yield
    finally:
        os.close(fd)
