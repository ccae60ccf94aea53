"""Helpers for the flanneld-migration tests: a node's state exactly as flanneld leaves it
(built with etcdctl, ip and bridge), the real flanneld as a process, and the kernel
entries of a node with every protocol, to find duplicates.
"""

from __future__ import annotations

import json
import os
import subprocess
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from flannelish.testing.etcd import EtcdMember
from flannelish.testing.proc import stop_pid
from flannelish.testing.underlay import Host

PREFIX = "/coreos.com/network"


def flanneld_bin() -> str | None:
    """FLANNELD_BIN (e.g. /usr/local/bin/flanneld as shared/tools/flanneld builds it)."""
    path = os.environ.get("FLANNELD_BIN")
    return path if path and os.access(path, os.X_OK) else None


def lease_key(subnet: IPv4Network) -> str:
    return f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}"


def flannel_lease_value(public_ip: Any, mac: str | None, vni: int = 1) -> str:
    """A lease value byte for byte as flanneld writes it (docs/flannel-compat.md §13, example 7)."""
    if mac is None:
        return f'{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"host-gw"}}'
    return (
        f'{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}'
    )


def lease_fields(value: str) -> dict[str, Any]:
    """A lease value's fields without flannelish's NodeID (Flannel ignores that field)."""
    doc = json.loads(value)
    doc.pop("NodeID", None)
    return doc


def flanneld_leaves_node(
    host: Host,
    etcd: EtcdMember,
    subnet: IPv4Network,
    mac: str,
    subnet_file: Path,
    network: str = "10.244.0.0/16",
) -> str:
    """A VXLAN node as flanneld leaves it on stop: lease (86400 s etcd lease), subnet.env,
    flannel.1 with its MAC and address; returns the lease value."""
    out = etcd.etcdctl("lease", "grant", "86400").stdout
    lease_id = out.split()[1]
    value = flannel_lease_value(host.ip, mac)
    etcd.etcdctl("put", f"--lease={lease_id}", lease_key(subnet), value)
    subnet_file.parent.mkdir(parents=True, exist_ok=True)
    subnet_file.write_text(
        f"FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet.network_address + 1}/"
        f"{subnet.prefixlen}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    host.run("ip", "link", "add", "flannel.1", "address", mac, "mtu", "1450", "type", "vxlan",
             "id", "1", "local", str(host.ip), "dev", "eth0", "dstport", "8472",
             "nolearning")  # fmt: skip
    host.run("ip", "addr", "add", f"{subnet.network_address}/32", "dev", "flannel.1")
    host.run("ip", "link", "set", "flannel.1", "up")
    return value


def flanneld_leaves_hostgw_node(
    host: Host, etcd: EtcdMember, subnet: IPv4Network, subnet_file: Path,
    network: str = "10.244.0.0/16",
) -> str:  # fmt: skip
    """A host-gw node as flanneld leaves it: lease and subnet.env (no device)."""
    lease_id = etcd.etcdctl("lease", "grant", "86400").stdout.split()[1]
    value = flannel_lease_value(host.ip, None)
    etcd.etcdctl("put", f"--lease={lease_id}", lease_key(subnet), value)
    subnet_file.parent.mkdir(parents=True, exist_ok=True)
    subnet_file.write_text(
        f"FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet.network_address + 1}/"
        f"{subnet.prefixlen}\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
    )
    return value


def flanneld_programs_peer(host: Host, subnet: IPv4Network, public_ip: Any, mac: str) -> None:
    """What flanneld does for one VXLAN peer: neigh, FDB, route (proto boot).

    See docs/flannel-compat.md §7 and §13, example 10.
    """
    gw = str(subnet.network_address)
    host.run("ip", "neigh", "replace", gw, "lladdr", mac, "dev", "flannel.1", "nud", "permanent")
    host.run("bridge", "fdb", "replace", mac, "dev", "flannel.1", "dst", str(public_ip),
             "self", "permanent")  # fmt: skip
    host.run("ip", "route", "replace", str(subnet), "via", gw, "dev", "flannel.1", "onlink")


def all_entries(host: Host, dev: str = "flannel.1") -> dict[str, list[Any]]:
    """Every permanent neighbour and FDB entry on `dev` and every route through the pod
    network, whatever their protocol, so duplicates show."""
    neigh = json.loads(
        host.run("ip", "-j", "neigh", "show", "dev", dev, check=False).stdout or "[]"
    )
    fdb = json.loads(
        host.run("bridge", "-j", "fdb", "show", "dev", dev, check=False).stdout or "[]"
    )
    routes = json.loads(
        host.run("ip", "-j", "route", "show", "root", "10.244.0.0/16").stdout or "[]"
    )
    return {
        "neigh": sorted(
            (n["dst"], n.get("lladdr")) for n in neigh if "PERMANENT" in n.get("state", [])
        ),
        "fdb": sorted((f["mac"], f.get("dst")) for f in fdb if f.get("dst")),
        "route": sorted(
            (r["dst"], r.get("gateway"), r.get("dev"), r.get("protocol", "boot"), r.get("type", ""))
            for r in routes
        ),
    }


def peer_routes(host: Host) -> list[tuple[str, str | None, str]]:
    """(dst, gateway, protocol) of the unicast routes into the pod network except connected ones."""
    return [
        (dst, gw, proto)
        for dst, gw, _dev, proto, kind in all_entries(host)["route"]
        if proto != "kernel" and kind != "blackhole"
    ]


class FlanneldProc:
    """The real flanneld inside a host namespace, stopped by PID."""

    def __init__(self, binary: str, host: Host, endpoint: str, subnet_file: Path, log: Path,
                 *extra: str) -> None:  # fmt: skip
        self.binary, self.host, self.endpoint = binary, host, endpoint
        self.subnet_file, self.log_path, self.extra = subnet_file, log, list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FlanneldProc:
        argv = [self.binary, f"--etcd-endpoints={self.endpoint}", "--iface=eth0",
                f"--subnet-file={self.subnet_file}", *self.extra]  # fmt: skip
        self.subnet_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host.netns, *argv], stdout=log, stderr=log
            )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, proc=self.proc)
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
