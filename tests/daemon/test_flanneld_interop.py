"""flannelish next to the real flanneld (FLANNELD_BIN, built by shared/tools/flanneld):
a mixed cluster where pods ping every way, nodes leaving on either side, and the
takeover flanneld -> flannelish -> flanneld on a live node with a 10 ms ping running.

Skipped with one line where no flanneld binary is available; the takeover without
the binary is tests/daemon/test_migration.py.
"""

from __future__ import annotations

import itertools
import json
import time
from ipaddress import IPv4Interface, IPv4Network

import pytest

from .drillkit import PingLoss
from .flanneldkit import (
    FlanneldProc,
    all_entries,
    flanneld_bin,
    lease_fields,
    lease_key,
    peer_routes,
)
from .helpers import VENV_BIN, DaemonProc, add_pod, ping, wait_for

FLANNELD = flanneld_bin()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(FLANNELD is None, reason="no flanneld binary (set FLANNELD_BIN)"),
]

PREFIX = "/coreos.com/network"
CONFIGS = {
    "vxlan": '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}',
    "host-gw": '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}',
}


def env_subnet(path) -> tuple[IPv4Network, int]:
    env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return IPv4Interface(env["FLANNEL_SUBNET"]).network, int(env["FLANNEL_MTU"])


class Cluster:
    """Nodes on one underlay: ("flanneld" | "flannelish", host, process, subnet.env)."""

    def __init__(self, underlay, etcd, factory, tmp, backend: str) -> None:
        self.underlay, self.etcd, self.factory, self.tmp = underlay, etcd, factory, tmp
        self.backend = backend
        self.nodes: dict[str, dict] = {}
        etcd.etcdctl("put", f"{PREFIX}/config", CONFIGS[backend])

    def add(self, name: str, kind: str) -> dict:
        host = self.underlay.add_host(name)
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        node = {"kind": kind, "host": host, "env": self.tmp / name / "subnet.env"}
        node["proc"] = self._proc(node, kind).start()
        self.nodes[name] = node
        return node

    def _proc(self, node: dict, kind: str):
        host, env = node["host"], node["env"]
        if kind == "flanneld":
            log = self.tmp / f"{host.name}-flanneld.log"
            return FlanneldProc(FLANNELD, host, self.etcd.client_url, env, log)
        d = DaemonProc(host, self.etcd.client_url, self.tmp, "-iface=eth0")
        d.subnet_file = env
        return d

    def switch(self, name: str, kind: str) -> None:
        """Stop the node's daemon (SIGTERM) and start the other one with the same flags."""
        node = self.nodes[name]
        node["proc"].stop()
        node["kind"] = kind
        node["proc"] = self._proc(node, kind).start()

    def ready(self, name: str) -> None:
        node = self.nodes[name]

        def up() -> bool:
            proc = node["proc"]
            alive = proc.alive() if hasattr(proc, "alive") else proc.proc.poll() is None
            assert alive, f"{node['kind']} on {name} exited:\n{proc.log_tail()}"
            return node["env"].exists()

        wait_for(up, 30, 0.1, f"subnet.env of {name}")
        node["subnet"], node["mtu"] = env_subnet(node["env"])

    def add_pod(self, name: str) -> str:
        node = self.nodes[name]
        node["pod"] = add_pod(self.factory, node["host"], node["subnet"], f"p{name}", node["mtu"])
        return node["pod"]

    def pod_ip(self, name: str):
        return self.nodes[name]["subnet"].network_address + 2

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node["proc"].stop()


@pytest.fixture
def cluster(underlay, underlay_etcd, netns_factory, tmp_path):
    made: list[Cluster] = []

    def make(backend: str) -> Cluster:
        c = Cluster(underlay, underlay_etcd, netns_factory, tmp_path, backend)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop_all()


def converged(c: Cluster, name: str) -> bool:
    """Node `name` has a route to every other node's subnet (either daemon's)."""
    host = c.nodes[name]["host"]
    have = {dst for dst, _gw, _proto in peer_routes(host)}
    want = {str(n["subnet"]) for other, n in c.nodes.items() if other != name and "subnet" in n}
    return want <= have


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_mixed_cluster_pods_ping_every_way_and_leaving_nodes_are_removed(cluster, backend):
    c = cluster(backend)
    for name, kind in (("h1", "flanneld"), ("h2", "flannelish"), ("h3", "flannelish")):
        c.add(name, kind)
    for name in c.nodes:
        c.ready(name)
        c.add_pod(name)
    for name in c.nodes:
        wait_for(lambda n=name: converged(c, n), 30, 0.1, f"routes on {name}")
    for a, b in itertools.permutations(c.nodes, 2):
        assert ping(c.nodes[a]["pod"], c.pod_ip(b), count=2), f"pod {a} -> pod {b}"
    # A flannelish node leaves (daemon stopped, lease deleted): flanneld and flannelish
    # remove their routes to it.
    gone = c.nodes["h3"]
    gone["proc"].stop()
    c.etcd.etcdctl("del", lease_key(gone["subnet"]))
    for name in ("h1", "h2"):
        wait_for(lambda n=name: str(gone["subnet"]) not in
                 {d for d, _g, _p in peer_routes(c.nodes[n]["host"])},
                 30, 0.1, f"{name} dropping h3")  # fmt: skip
    # The flanneld node leaves: the flannelish node removes its route to it.
    fl = c.nodes["h1"]
    fl["proc"].stop()
    c.etcd.etcdctl("del", lease_key(fl["subnet"]))
    wait_for(lambda: str(fl["subnet"]) not in
             {d for d, _g, _p in peer_routes(c.nodes["h2"]["host"])},
             30, 0.1, "h2 dropping the flanneld node")  # fmt: skip


def mac(host) -> str:
    return host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip()


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_takeover_from_flanneld_and_back_loses_no_ping(cluster, backend):
    c = cluster(backend)
    c.add("h1", "flanneld")
    c.add("h2", "flannelish")
    for name in c.nodes:
        c.ready(name)
        c.add_pod(name)
    for name in c.nodes:
        wait_for(lambda n=name: converged(c, n), 30, 0.1, f"routes on {name}")
    h1 = c.nodes["h1"]
    host, subnet = h1["host"], h1["subnet"]
    value = c.etcd.etcdctl("get", "--print-value-only", lease_key(subnet)).stdout.strip()
    vtep = mac(host) if backend == "vxlan" else None
    peer = str(c.nodes["h2"]["subnet"])

    def proto_of_peer_route() -> str | None:
        return next((p for d, _g, p in peer_routes(host) if d == peer), None)

    def one_entry_each() -> None:
        entries = all_entries(host)
        routes = [r for r in entries["route"] if r[0] == peer]
        assert len(routes) == 1, entries
        if backend == "vxlan":
            assert len(entries["neigh"]) == 1 and len(entries["fdb"]) == 1, entries

    results = {}
    # Back on host-gw, flanneld keeps our route as its own: it compares gateway and
    # device only, and ours is identical (docs/flannel-compat.md §8).
    back = ("boot",) if backend == "vxlan" else ("boot", "70")
    for to, protos in (("flannelish", ("70",)), ("flanneld", back)):
        ping_ = PingLoss(h1["pod"], c.pod_ip("h2"), interval=0.01)
        ping_.wait_first_reply()
        c.switch("h1", to)
        c.ready("h1")
        wait_for(lambda p=protos: proto_of_peer_route() in p, 30, 0.1, f"{to} owning the route")
        time.sleep(2)
        results[to] = ping_.stop()
        print(f"{backend} takeover -> {to}: {results[to]}")
        one_entry_each()
        assert env_subnet(h1["env"])[0] == subnet
        now = c.etcd.etcdctl("get", "--print-value-only", lease_key(subnet)).stdout.strip()
        assert lease_fields(now) == lease_fields(value)  # flannelish adds only its NodeID
        if vtep is not None:
            assert mac(host) == vtep
    for to, result in results.items():
        assert result.lost == 0, f"-> {to}: {result}\n{c.nodes['h1']['proc'].log_tail()}"
    assert ping(c.nodes["h2"]["pod"], c.pod_ip("h1"), count=2)
    # The way back's last step (README): doctor names our table left beside flanneld.
    found = doctor_flanneld(host, h1["env"])
    assert any("nft delete table ip flannelish" in f["fix"] for f in found), found
    host.run("nft", "delete", "table", "ip", "flannelish")
    if backend == "vxlan":  # flanneld replaced our routes; the nexthops they used are left
        found = doctor_flanneld(host, h1["env"])
        [unused] = [f for f in found if "nexthop" in f["message"]]
        assert unused["fix"] == "ip nexthop flush protocol 70", found
        host.run("ip", "nexthop", "flush", "protocol", "70")
    assert [f["severity"] for f in doctor_flanneld(host, h1["env"])] == ["warning"]  # it runs
    assert ping(c.nodes["h2"]["pod"], c.pod_ip("h1"), count=2)


def doctor_flanneld(host, subnet_file) -> list[dict]:
    argv = [str(VENV_BIN / "flannelish"), "doctor", "--json", "--no-etcd",
            "--subnet-file", str(subnet_file)]  # fmt: skip
    out = host.run(*argv, check=False).stdout
    checks = {c["name"]: c["findings"] for c in json.loads(out)["checks"]}
    return checks["flanneld"]
