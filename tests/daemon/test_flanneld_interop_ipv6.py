"""The takeover of a live dual-stack flanneld node (the real flanneld, FLANNELD_BIN) by
flannelish, on a dual-stack underlay: the IPv6 device flannel-v6.<VNI> with its MAC, the
IPv6 lease half and flanneld's IPv6 peer routes are taken over in place while a pod pings
a pod on another node over IPv6 every 10 ms (docs/flannel-compat.md §7, §14).

Skipped with one line where no flanneld binary is available.
"""

from __future__ import annotations

import json
import time

import pytest

from .drillkit import PingLoss
from .flanneldkit import FlanneldProc, flanneld_bin, lease_fields
from .helpers import DaemonProc, ping, wait_for
from .test_daemon_ipv6 import DUAL, add_pod6, etcd6, subnet6, underlay6  # noqa: F401

FLANNELD = flanneld_bin()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(FLANNELD is None, reason="no flanneld binary (set FLANNELD_BIN)"),
]

PREFIX = "/coreos.com/network"


def entries6(host) -> dict[str, list]:
    """Every permanent neighbour and FDB entry on flannel-v6.1 and every IPv6 route into
    the pod network, whatever its protocol, so duplicates show."""
    dev = "flannel-v6.1"
    neigh = json.loads(host.run("ip", "-6", "-j", "neigh", "show", "dev", dev).stdout or "[]")
    fdb = json.loads(host.run("bridge", "-j", "fdb", "show", "dev", dev).stdout or "[]")
    routes = json.loads(
        host.run("ip", "-6", "-j", "route", "show", "root", "fd44::/48").stdout or "[]"
    )
    return {
        "neigh": sorted((n["dst"], n.get("lladdr")) for n in neigh if "PERMANENT" in n["state"]),
        "fdb": sorted((f["mac"], f.get("dst")) for f in fdb if f.get("dst")),
        "route": sorted(
            (r["dst"], r.get("gateway"), r.get("dev"), str(r.get("protocol", "boot")))
            for r in routes
            if r.get("protocol") != "kernel"
        ),
    }


def mac6(host) -> str:
    return host.run("cat", "/sys/class/net/flannel-v6.1/address").stdout.strip()


def lease_value(etcd, v6_subnet) -> tuple[str, str]:
    """(key, value) of the lease holding this IPv6 subnet."""
    out = json.loads(etcd.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "-w", "json").stdout)
    import base64

    for kv in out.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        if key.endswith(f"&{v6_subnet.network_address}-{v6_subnet.prefixlen}"):
            return key, base64.b64decode(kv["value"]).decode()
    raise AssertionError(f"no lease for {v6_subnet}")


def test_takeover_of_a_dual_stack_flanneld_node_loses_no_ipv6_ping(
    underlay6,  # noqa: F811 (the fixture imported above)
    etcd6,  # noqa: F811
    netns_factory,
    tmp_path,
):
    etcd6.etcdctl("put", f"{PREFIX}/config", DUAL)
    h1, h2 = underlay6.add_host("h1"), underlay6.add_host("h2")
    env1 = tmp_path / "h1" / "subnet.env"
    fl = FlanneldProc(FLANNELD, h1, etcd6.client_url, env1, tmp_path / "flanneld.log").start()
    ours = DaemonProc(h2, etcd6.client_url, tmp_path, "-iface=eth0").start()
    fish: DaemonProc | None = None
    try:
        wait_for(lambda: fl.alive() and env1.exists(), 30, 0.1, f"flanneld: {fl.log_tail()}")
        ours.wait_ready()
        flanneld_node = DaemonProc(h1, etcd6.client_url, tmp_path)  # only to read its env
        flanneld_node.subnet_file = env1
        s1, s2 = subnet6(flanneld_node), subnet6(ours)
        key, value = lease_value(etcd6, s1)
        peer = (str(s2), str(s2.network_address), "flannel-v6.1")

        def peer_route() -> tuple | None:
            return next((r for r in entries6(h1)["route"] if r[:3] == peer), None)

        wait_for(lambda: peer_route() is not None, 30, 0.1, "flanneld's IPv6 route to h2")
        assert peer_route()[3] != "70"  # flanneld's (protocol boot)
        vtep6 = mac6(h1)
        pa = add_pod6(netns_factory, h1, flanneld_node, "pa", 1430)
        add_pod6(netns_factory, h2, ours, "pb", 1430)
        target = s2.network_address + 2
        wait_for(lambda: ping(pa, target), 10, what="pod a -> pod b over IPv6 (flanneld)")

        loss = PingLoss(pa, target, interval=0.01)
        loss.wait_first_reply()
        fl.stop()  # SIGTERM: flanneld leaves its data path
        fish = DaemonProc(h1, etcd6.client_url, tmp_path, "-iface=eth0")
        fish.subnet_file = env1
        fish.start().wait_ready()
        wait_for(lambda: (peer_route() or ("",) * 4)[3] == "70", 30, 0.1, "our IPv6 route")
        time.sleep(2)
        result = loss.stop()
        print(f"dual-stack takeover flanneld -> flannelish, IPv6 ping: {result}")
        assert result.lost == 0, f"{result}\n{fish.log_tail()}"
        # One entry each on flannel-v6.1, the same device MAC, subnet and lease.
        now = entries6(h1)
        assert now["route"] == [(*peer, "70")], now
        assert len(now["neigh"]) == 1 and len(now["fdb"]) == 1, now
        assert now["fdb"][0][1] == str(h2.ip6)
        assert mac6(h1) == vtep6 and subnet6(fish) == s1
        key_now, value_now = lease_value(etcd6, s1)
        assert key_now == key and lease_fields(value_now) == lease_fields(value)
        assert "rebuilding" not in fish.log_path.read_text()
        # And the other way: h2 still reaches h1's pod over IPv6.
        assert ping(pa, target) and ping(pa, target)
    finally:
        fl.stop()
        ours.stop()
        if fish is not None:
            fish.stop()
