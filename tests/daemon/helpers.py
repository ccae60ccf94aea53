"""Helpers for daemon tests: pods as plain veths, kernel state as tuples, polling."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any, TypeVar

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run
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
