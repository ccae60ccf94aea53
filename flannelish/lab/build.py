"""`flannelish lab up`: build the lab step by step, recording everything as it goes.

Order matters and mirrors a real cluster: underlay and nodes first, then
etcd on the underlay, then the network config (`flannelish config put`),
then one `flannelish daemon` per node (waiting for its subnet.env), then
the pods, attached by `flannelish-cni` invoked as a runtime would, and
finally a wait until every node has a route to every other node's subnet,
so `lab check` right after `lab up` does not race the daemons.

The state file is saved after every step; any failure tears down what was
built (keeping the logs) and raises LabBuildError naming the step and logs.
The steps stay in one module (a little over ~450 lines) so the build order
reads top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, cast

from flannelish.errors import FlannelishError, NotAvailableError
from flannelish.lab import cni, names, procs
from flannelish.lab.offloads import ETHTOOL
from flannelish.lab.state import LabSpec, LabState, NodeState, PodState, load_state, locked
from flannelish.lab.teardown import clear_dir, remove_leftover_netns, teardown
from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run
from flannelish.testing.underlay import Underlay

DAEMON_READY_TIMEOUT = 20.0
ROUTES_READY_TIMEOUT = 20.0


class LabBuildError(FlannelishError):
    """A step of `lab up` failed; the lab was torn down, the logs were kept."""


class Step(Protocol):
    detail: str


class Reporter(Protocol):
    def step(self, title: str) -> contextlib.AbstractContextManager[Step]: ...


class _LabNetns(NetnsFactory):
    """NetnsFactory with the lab's fixed naming (fl-<lab>-<short>) instead of a per-PID one."""

    def __init__(self, lab: str, on_create: Callable[[str], None]) -> None:
        super().__init__("fl")
        self.prefix = names.netns_prefix(lab)
        self._on_create = on_create

    def create(self, short: str) -> str:
        name = self.name(short)
        # Recorded *before* it exists, so a crash right after creation is still undone.
        self._on_create(name)
        return super().create(short)


def flannelish_exe() -> str:
    here = Path(sys.executable).parent / "flannelish"
    if here.exists():
        return str(here)
    found = shutil.which("flannelish")
    if found is None:
        raise NotAvailableError("the flannelish command is not installed", "run make setup")
    return found


def check_prerequisites(spec: LabSpec) -> None:
    if os.geteuid() != 0:
        raise NotAvailableError("the lab needs root (it creates network namespaces)")
    from flannelish.testing.etcd import require_etcd

    require_etcd()
    if not Path(ETHTOOL).exists():
        raise NotAvailableError(f"{ETHTOOL} not found", "install Debian's ethtool (make setup)")
    cni.plugin_dir()


def up(spec: LabSpec, state_root: Path, reporter: Reporter) -> tuple[LabState, bool]:
    """Build the lab, or return the existing one. Returns (state, built_now)."""
    spec.validate()
    directory = names.lab_dir(state_root, spec.name)
    if len(str(directory / "node00" / "flannelish.sock")) > names.MAX_SOCKET_PATH:
        raise FlannelishError(
            f"state directory {directory} is too long for the daemons' unix sockets",
            "choose a shorter --state-dir",
        )
    check_prerequisites(spec)
    with locked(directory):
        existing = load_state(directory)
        if existing is not None and existing.phase == "up":
            return existing, False
        if existing is not None:
            # A crashed or failed earlier `up`: undo whatever it left, then start over.
            teardown(existing, keep_logs=False, remove_dir=False)
        remove_leftover_netns(spec.name)
        clear_dir(directory)
        state = LabState(spec=spec, dir=str(directory), builder_pid=os.getpid())
        state.save()
        _Builder(state, reporter).build()
        return state, True


class _Builder:
    def __init__(self, state: LabState, reporter: Reporter) -> None:
        self.state = state
        self.spec = state.spec
        self.reporter = reporter
        self.factory = _LabNetns(self.spec.name, self._record_netns)
        families = self.spec.families
        self.underlay = Underlay(
            self.factory,
            bridge=names.BRIDGE,
            network6=names.UNDERLAY_NETWORK6 if 6 in families else None,
            ipv4=4 in families,
        )
        self.current = ""

    def _record_netns(self, name: str) -> None:
        self.state.netns.append(name)
        self.state.save()

    @contextlib.contextmanager
    def _step(self, title: str) -> Iterator[Step]:
        self.current = title
        started = time.monotonic()
        with self.reporter.step(title) as step:
            yield step
        self.state.timings[title] = round(time.monotonic() - started, 3)
        self.state.save()

    def build(self) -> None:
        started = time.monotonic()
        try:
            self._underlay()
            self._etcd()
            self._config()
            if self.spec.namespaces:
                from flannelish.lab.policy import label_namespaces

                label_namespaces(self.state, flannelish_exe())
            self._daemons()
            self._pods()
            self._routes()
        except BaseException as exc:
            self._fail(exc)
        self.state.timings["total"] = round(time.monotonic() - started, 3)
        self.state.phase = "up"
        self.state.save()

    def _fail(self, exc: BaseException) -> None:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        self.state.phase = "failed"
        self.state.error = f"{self.current}: {reason}"
        self.state.save()
        teardown(self.state, keep_logs=True)
        raise LabBuildError(
            f"lab up failed at step '{self.current}'",
            f"{reason}\nthe lab was torn down; logs are in {self.state.logs_dir} "
            f"(daemons) and {self.state.path / 'etcd' / 'etcd.log'}",
        ) from exc

    # -- steps --------------------------------------------------------------

    def _underlay(self) -> None:
        families = self.spec.families
        nets = [str(names.UNDERLAY_NETWORK)] * (4 in families)
        nets += [str(names.UNDERLAY_NETWORK6)] * (6 in families)
        with self._step(f"underlay {' + '.join(nets)} and {self.spec.nodes} nodes") as st:
            self.underlay.create()
            self.state.underlay_netns = self.underlay.netns
            for index in range(1, self.spec.nodes + 1):
                name = names.node_name(index)
                host = self.underlay.add_host(name, index)
                node_dir = self.state.path / name
                node_dir.mkdir(parents=True, exist_ok=True)
                # Nodes route between their pods and the overlay, as a real node must.
                run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=host.netns)
                if 6 in families:
                    run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], netns=host.netns)
                ip6 = str(host.ip6) if host.ip6 is not None else ""
                # eth0 keeps its offloads (TSO/GSO): `verify` turns segmentation off
                # only while it captures (flannelish.lab.offloads), so the lab's
                # throughput is what a node really gets.
                self.state.nodes.append(
                    NodeState(
                        name=name,
                        netns=host.netns,
                        ip=str(host.ip) if 4 in families else ip6,
                        ip6=ip6,
                        dir=str(node_dir),
                        subnet_file=str(node_dir / "subnet.env"),
                        netconf=str(node_dir / "cni.conf"),
                    )
                )
            self.state.save()
            st.detail = f"bridge {names.BRIDGE} in {self.underlay.netns}"

    def _etcd(self) -> None:
        from flannelish.testing.etcd import EtcdMember

        with self._step("etcd on the underlay") as st:
            member = EtcdMember(
                name="etcd",
                host=names.etcd_host(self.spec.ip_family),
                netns=self.state.underlay_netns,
                client_port=names.ETCD_CLIENT_PORT,
                peer_port=names.ETCD_PEER_PORT,
                data_dir=self.state.path / "etcd" / "data",
                start_new_session=True,
            )
            member.start()
            assert member.proc is not None
            self.state.etcd = procs.record(
                "etcd",
                member.proc.pid,
                str(member.log_path),
                argv=list(map(str, cast(list[str], member.proc.args))),
            )
            self.state.etcd_endpoint = member.client_url
            self.state.save()
            member.wait_healthy(timeout=15)
            member.proc.returncode = 0  # the lab owns it now; don't warn about a running child
            st.detail = member.client_url

    def _config(self) -> None:
        with self._step("network config (flannelish config put)") as st:
            path = self.state.path / "net-conf.json"
            path.write_text(json.dumps(self.spec.network_config()) + "\n")
            result = run(
                [flannelish_exe(), "config", "put", str(path),
                 "--etcd-endpoints", self.state.etcd_endpoint],
                netns=self.state.underlay_netns,
                check=False,
            )  # fmt: skip
            if result.returncode != 0:
                raise FlannelishError(
                    "flannelish config put failed", (result.stderr or result.stdout).strip()
                )
            st.detail = f"{path.name}: {json.dumps(self.spec.network_config()['Backend'])}"

    def _daemons(self) -> None:
        with self._step(f"{len(self.state.nodes)} daemons (flannelish daemon)") as st:
            exe = flannelish_exe()
            for node in self.state.nodes:
                argv = [
                    exe, "--log-format", "text", "daemon",
                    "--etcd-endpoints", self.state.etcd_endpoint,
                    "--iface", "eth0",
                    *(["--public-ip", node.addr(4)] if node.addr(4) else []),
                    *(["--public-ipv6", node.ip6] if node.ip6 else []),
                    "--subnet-file", node.subnet_file,
                    # As kube-flannel runs it: the node masquerades only traffic
                    # leaving the pod network, so the CNI bridge does not SNAT
                    # pod-to-pod traffic (lab check's no-NAT probe proves it).
                    "--ip-masq",
                    # Health, readiness, metrics and /status, as on a real node;
                    # bound inside the node namespace only.
                    "--healthz-port", str(names.HEALTHZ_PORT),
                    *(["--policy"] if self.spec.policy else []),
                ]  # fmt: skip
                node.healthz_port = names.HEALTHZ_PORT
                log = self.state.logs_dir / f"{node.name}-daemon.log"
                env = {}
                if self.spec.backend == "wireguard":
                    # Each node: its own key and its own /run/wireguard (private mount namespace).
                    env = {
                        "WIREGUARD_KEY_FILE": str(Path(node.subnet_file).parent / "wgkey"),
                        "FLANNELISH_WG_PRIVATE_RUN": "1",
                    }
                node.daemon = procs.spawn(argv, node.netns, log, f"daemon {node.name}", env)
                self.state.save()
            self._wait_for_subnet_files()
            for node in self.state.nodes:
                env = read_env_file(Path(node.subnet_file))
                node.subnet = _network_of(env.get("FLANNEL_SUBNET", ""))
                node.subnet6 = _network_of(env.get("FLANNEL_IPV6_SUBNET", ""))
                if not node.subnet:  # IPv6-only: the IPv6 subnet is the node's subnet
                    node.subnet = node.subnet6
                node.mtu = int(env.get("FLANNEL_MTU", "0") or 0)
            self.state.save()
            leases = [f"{n.name} {n.subnet}" for n in self.state.nodes]
            st.detail = ", ".join(leases[:3]) + (", ..." if len(leases) > 3 else "")

    def _wait_for_subnet_files(self) -> None:
        deadline = time.monotonic() + DAEMON_READY_TIMEOUT
        pending = list(self.state.nodes)
        while pending:
            for node in list(pending):
                assert node.daemon is not None
                if Path(node.subnet_file).exists():
                    pending.remove(node)
                elif not procs.is_ours(node.daemon):
                    raise FlannelishError(
                        f"the daemon on {node.name} exited before writing its subnet file",
                        f"log {node.daemon.log}:\n{log_tail(node.daemon.log)}",
                    )
            if pending and time.monotonic() > deadline:
                node = pending[0]
                raise FlannelishError(
                    f"the daemon on {node.name} wrote no subnet file within "
                    f"{DAEMON_READY_TIMEOUT:.0f}s",
                    f"log {node.daemon.log if node.daemon else ''}:\n"
                    f"{log_tail(node.daemon.log if node.daemon else '')}",
                )
            if pending:
                time.sleep(0.05)

    def _pods(self) -> None:
        per_node = self.spec.pods_per_node
        total = per_node * self.spec.nodes + len(self.spec.pods)
        with self._step(f"{total} pods (flannelish-cni ADD)") as st:
            for n_index, node in enumerate(self.state.nodes, start=1):
                conf = cni.netconf(f"fl-{self.spec.name}", node.subnet_file, f"{node.dir}/cni")
                Path(node.netconf).write_text(json.dumps(conf, indent=2) + "\n")
                for p_index in range(1, per_node + 1):
                    short = names.pod_name(n_index, p_index)
                    pod = PodState(
                        name=short,
                        node=node.name,
                        netns=self.factory.create(short),
                        container_id=f"fl-{self.spec.name}-{short}",
                    )
                    self.state.pods.append(pod)
                for item in self.spec.pods:  # lab up --pods: namespaces and labels
                    if item["node"] == n_index:
                        short = f"{item['namespace']}-{item['name']}"
                        self.state.pods.append(
                            PodState(
                                name=short,
                                node=node.name,
                                netns=self.factory.create(short),
                                container_id=f"fl-{self.spec.name}-{short}",
                                namespace=item["namespace"],
                                pod_name=item["name"],
                                labels=dict(item.get("labels") or {}),
                            )
                        )
            self.state.save()
            # Nodes attach in parallel (as kubelets on different machines would);
            # pods of one node one after the other, as one runtime serialises them.
            with ThreadPoolExecutor(max_workers=max(1, len(self.state.nodes))) as pool:
                errors = [e for e in pool.map(self._attach_node, self.state.nodes) if e]
            self.state.save()
            if errors:
                raise FlannelishError("flannelish-cni ADD failed", "; ".join(errors))
            st.detail = f"{len(self.state.pods)} attached, IPs in the table below"

    def _attach_node(self, node: NodeState) -> str:
        for pod in self.state.pods_of(node.name):
            k8s = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.pod_name}"
            result = cni.invoke(
                "ADD", node.netns, Path(node.netconf), pod.container_id, pod.netns, pod.ifname,
                cni_args=k8s if pod.namespace else "", labels=pod.labels,
            )  # fmt: skip
            if not result.ok or not result.ip:
                return f"{pod.name}: {result.error}"
            pod.ip = result.ip
            pod.ip6 = result.ip_of(6)
            pod.attached = True
        return ""

    def _routes(self) -> None:
        with self._step("routes to every peer subnet on every node") as st:
            deadline = time.monotonic() + ROUTES_READY_TIMEOUT
            while True:
                missing = self._missing_routes()
                if not missing:
                    break
                for node in self.state.nodes:
                    if node.daemon is not None and not procs.is_ours(node.daemon):
                        raise FlannelishError(
                            f"the daemon on {node.name} exited",
                            f"log {node.daemon.log}:\n{log_tail(node.daemon.log)}",
                        )
                if time.monotonic() > deadline:
                    raise FlannelishError(
                        f"routes still missing after {ROUTES_READY_TIMEOUT:.0f}s",
                        "; ".join(missing) + f" (daemon logs in {self.state.logs_dir})",
                    )
                time.sleep(0.05)
            if self.spec.backend == "vxlan":
                for node in self.state.nodes:
                    device = "flannel" if 4 in self.spec.families else "flannel-v6"
                    node.vtep_mac = _link_mac(node.netns, f"{device}.{self.spec.vni}")
            self.state.save()
            routes = len(self.state.nodes) * (len(self.state.nodes) - 1)
            routes *= len(self.spec.families)
            st.detail = f"{routes} routes"

    def _missing_routes(self) -> list[str]:
        if self.spec.backend == "wireguard":
            return self._missing_wireguard_peers()
        missing = []
        for family in self.spec.families:
            for node in self.state.nodes:
                have = {r.get("dst") for r in _routes(node.netns, family)}
                for peer in self.state.nodes:
                    subnet = peer.subnet_of(family)
                    if peer is not node and subnet not in have:
                        missing.append(f"{node.name} has no route to {peer.name}'s {subnet}")
        return missing

    def _missing_wireguard_peers(self) -> list[str]:
        """WireGuard, per family: one route for the family's network via its device
        (flannel-wg, flannel-wg-v6), and every peer's subnet on that device."""
        from flannelish.kernel.wireguard_go import node_device_state

        missing = []
        for family in self.spec.families:
            device = names.wireguard_device(family)
            network = self.spec.network6 if family == 6 else self.spec.network
            for node in self.state.nodes:
                have = {(r.get("dst"), r.get("dev")) for r in _routes(node.netns, family)}
                if (network, device) not in have:
                    missing.append(f"{node.name} has no route to {network} via {device}")
                dev = node_device_state(Path(node.subnet_file).parent, device)
                allowed = {str(n) for p in dev.peers for n in p.allowed_ips} if dev else set()
                for peer in self.state.nodes:
                    subnet = peer.subnet_of(family)
                    if peer is not node and subnet not in allowed:
                        missing.append(
                            f"{node.name} has no WireGuard peer on {device} for "
                            f"{peer.name}'s {subnet}"
                        )
        return missing


def _routes(netns: str, family: int = 4) -> list[dict[str, Any]]:
    result = run(["ip", "-j", f"-{family}", "route", "show"], netns=netns, check=False)
    try:
        routes = json.loads(result.stdout or "[]")
    except ValueError:
        return []
    return routes if isinstance(routes, list) else []


def _link_mac(netns: str, ifname: str) -> str:
    result = run(["ip", "-j", "link", "show", ifname], netns=netns, check=False)
    try:
        return str(json.loads(result.stdout)[0]["address"])
    except (ValueError, IndexError, KeyError):
        return ""


def _network_of(cidr: str) -> str:
    from ipaddress import ip_interface

    try:
        return str(ip_interface(cidr).network)
    except ValueError:
        return ""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (subnet.env); missing file -> {}."""
    from flannelish.subnet_env import read_subnet_env_values

    try:
        return read_subnet_env_values(path)
    except OSError:
        return {}


def log_tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
