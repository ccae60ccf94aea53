"""Start and stop real etcd servers (Debian's /usr/bin/etcd) for tests and the lab.

A server listens on free ports of a given address (loopback by default, or
an underlay address inside a namespace), keeps its data in a temp dir, is
checked for health before use, and is stopped by PID.  A cluster is three
such members that know each other.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from flannelish.errors import NotAvailableError
from flannelish.testing.proc import in_netns, run, stop_pid

ETCD_BIN = "/usr/bin/etcd"
ETCDCTL_BIN = "/usr/bin/etcdctl"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on the loopback right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_etcd() -> None:
    for binary in (ETCD_BIN, ETCDCTL_BIN):
        if not Path(binary).exists():
            raise NotAvailableError(
                f"{binary} not found", "install Debian's etcd-server and etcd-client (make setup)"
            )


@dataclass
class EtcdMember:
    """One etcd process. Call start() then wait_healthy(); stop() always cleans up."""

    name: str
    host: str = "127.0.0.1"
    netns: str | None = None
    client_port: int = 0
    peer_port: int = 0
    data_dir: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    scheme: str = "http"
    cluster_token: str = ""
    # The lab's etcd outlives the command that starts it: its own session.
    start_new_session: bool = False
    proc: subprocess.Popen | None = None
    _owns_dir: bool = False

    def __post_init__(self) -> None:
        # Ports inside a fresh namespace are all free; on the loopback ask the kernel.
        probe_host = "127.0.0.1" if self.netns else self.host
        self.client_port = self.client_port or free_port(probe_host)
        self.peer_port = self.peer_port or free_port(probe_host)

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """host:port as flannelish's --etcd-endpoints accepts it."""
        return self.client_url

    @property
    def log_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir.parent / f"{self.name}.log"

    def start(self, initial_cluster: str | None = None, cluster_state: str = "new") -> None:
        require_etcd()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix=f"flannelish-etcd-{self.name}-")) / "data"
            self._owns_dir = True
        argv = [
            ETCD_BIN,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state",
            cluster_state,
            "--initial-cluster-token",
            self.cluster_token or f"tok-{self.name}",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            *self.extra_args,
        ]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                in_netns(self.netns, argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.start_new_session,
            )

    def wait_healthy(self, timeout: float = 20.0, ctl_args: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd {self.name} exited with {self.proc.returncode}; "
                    f"log: {self.log_path}\n{self.log_tail()}"
                )
            result = self.etcdctl("endpoint", "health", *(ctl_args or []), check=False)
            if result.returncode == 0:
                return
            last = result.stderr.strip()
            time.sleep(0.1)
        raise RuntimeError(f"etcd {self.name} not healthy after {timeout}s: {last}")

    def etcdctl(self, *args: str, check: bool = True, ctl_args: list[str] | None = None):
        argv = [
            ETCDCTL_BIN,
            f"--endpoints={self.client_url}",
            "--dial-timeout=1s",
            "--command-timeout=3s",
            *(ctl_args or []),
            *args,
        ]
        return run(argv, netns=self.netns, check=check)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the process (keeps the data dir, so it can start again)."""
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, proc=self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def destroy(self) -> None:
        """Stop and remove the data dir; safe to call more than once."""
        self.stop()
        if self._owns_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)
            self._owns_dir = False


def _port_race(exc: BaseException) -> bool:
    """Did a member fail because another process took its port since free_port() chose it?"""
    return isinstance(exc, RuntimeError) and "address already in use" in str(exc)


PORT_RACE_ATTEMPTS = 3


def start_etcd(
    name: str = "etcd0", host: str = "127.0.0.1", netns: str | None = None, **kwargs
) -> EtcdMember:
    """Start one member and wait until it is healthy (cleans up if it is not).

    A port chosen by free_port() can be taken by another process before etcd
    binds it (a busy machine, tests in parallel): then it starts again on new
    ports, unless the caller chose the ports.
    """
    chosen_ports = "client_port" in kwargs or "peer_port" in kwargs
    for attempt in range(PORT_RACE_ATTEMPTS):
        member = EtcdMember(name=name, host=host, netns=netns, **kwargs)
        try:
            member.start()
            member.wait_healthy()
        except BaseException as exc:
            member.destroy()
            if chosen_ports or not _port_race(exc) or attempt == PORT_RACE_ATTEMPTS - 1:
                raise
            continue
        return member
    raise AssertionError("unreachable")


@dataclass
class EtcdCluster:
    """Three (or more) members on the loopback, started together."""

    members: list[EtcdMember]
    root: Path | None = None

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def destroy(self) -> None:
        for member in self.members:
            member.destroy()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def start_etcd_cluster(size: int = 3, prefix: str = "m") -> EtcdCluster:
    """``size`` members on the loopback, healthy; new ports after a port race (see start_etcd)."""
    for attempt in range(PORT_RACE_ATTEMPTS):
        root = Path(tempfile.mkdtemp(prefix="flannelish-etcd-cluster-"))
        members = [EtcdMember(name=f"{prefix}{i}", cluster_token=root.name) for i in range(size)]
        for member in members:
            member.data_dir = root / member.name / "data"
            member._owns_dir = True
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        cluster = EtcdCluster(members, root)
        try:
            for member in members:
                member.start(initial_cluster=initial)
            for member in members:
                member.wait_healthy(timeout=30)
        except BaseException as exc:
            cluster.destroy()
            if not _port_race(exc) or attempt == PORT_RACE_ATTEMPTS - 1:
                raise
            continue
        return cluster
    raise AssertionError("unreachable")
