"""Helpers for daemon tests: pods as plain veths, kernel state as tuples, polling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run, stop_pid
from flannelish.testing.underlay import Host

T = TypeVar("T")


def add_pod(factory: NetnsFactory, host: Host, subnet: IPv4Network, short: str, mtu: int) -> str:
    """A pod namespace with eth0 = <subnet>.2, reached from the host by a routed veth (.1)."""
    pod = factory.create(short)
    gw, ip = subnet.network_address + 1, subnet.network_address + 2
    veth = f"v{short}"[:15]
    host.run("ip", "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
             "mtu", str(mtu), "netns", pod)  # fmt: skip
    host.run("ip", "addr", "add", f"{gw}/{subnet.prefixlen}", "dev", veth)
    host.run("ip", "link", "set", veth, "up")
    host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    p = ["ip", "-n", pod]
    run([*p, "addr", "add", f"{ip}/{subnet.prefixlen}", "dev", "eth0"])
    run([*p, "link", "set", "eth0", "up"])
    run([*p, "route", "add", "default", "via", str(gw)])
    return pod


def ping(netns: str, dst: Any, count: int = 2, timeout: float = 1.0) -> bool:
    result = run(["ping", "-c", str(count), "-i", "0.2", "-W", str(timeout), str(dst)],
                 netns=netns, check=False, timeout=30)  # fmt: skip
    return result.returncode == 0


def kernel_state(host: Host, dev: str = "flannel.1") -> dict[str, Any]:
    """Neigh, FDB and our routes on `dev`, as plain comparable data."""
    neigh = json.loads(host.run("ip", "-j", "neigh", "show", "dev", dev).stdout or "[]")
    fdb = json.loads(host.run("bridge", "-j", "fdb", "show", "dev", dev).stdout or "[]")
    routes = json.loads(host.run("ip", "-j", "route", "show", "proto", "70").stdout or "[]")
    return {
        "neigh": sorted(
            (n["dst"], n.get("lladdr")) for n in neigh if "PERMANENT" in n.get("state", [])
        ),
        "fdb": sorted((f["mac"], f.get("dst")) for f in fdb if f.get("dst")),
        "route": sorted((r["dst"], r.get("gateway"), r.get("dev")) for r in routes),
    }


def our_nexthops(host: Host) -> list[tuple[int, str, str]]:
    """Nexthop objects with our protocol (70), as (id, gateway, device), read with iproute2."""
    found = json.loads(host.run("ip", "-j", "nexthop", "show").stdout or "[]")
    return sorted(
        (n["id"], n.get("gateway"), n.get("dev")) for n in found if n.get("protocol") == "70"
    )


def link_details(host: Host, dev: str) -> dict[str, Any]:
    return json.loads(host.run("ip", "-d", "-j", "link", "show", dev).stdout)[0]


def wait_for(
    fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}; last={last!r}")


# -- daemons as subprocesses, one per host namespace ------------------------------

VENV_BIN = Path(sys.executable).parent
CONFIG = '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


class DaemonProc:
    """`flannelish daemon` inside a host namespace, stopped by PID."""

    def __init__(self, host: Host, endpoint: str, workdir: Path, *extra: str) -> None:
        self.host = host
        self.endpoint = endpoint
        self.dir = workdir / host.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.subnet_file = self.dir / "subnet.env"
        self.log_path = self.dir / "daemon.log"
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> DaemonProc:
        argv = [str(VENV_BIN / "flannelish"), "--log-format", "json", "daemon",
                "--etcd-endpoints", self.endpoint, "--subnet-file", str(self.subnet_file),
                *self.extra, *extra]  # fmt: skip
        env = dict(os.environ)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host.netns, *argv], stdout=log, stderr=log, env=env
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> dict[str, str]:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon on {self.host.name} exited: {self.log_tail()}")
            return self.subnet_file.exists()

        wait_for(ready, timeout, 0.1, f"subnet.env of {self.host.name}")
        return self.env()

    def env(self) -> dict[str, str]:
        lines = self.subnet_file.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    @property
    def subnet(self) -> IPv4Network:
        return IPv4Interface(self.env()["FLANNEL_SUBNET"]).network

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_pid(self.proc.pid, proc=self.proc)
        code = self.proc.returncode
        self.proc = None
        return code

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
