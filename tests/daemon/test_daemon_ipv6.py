"""`flannelish daemon` in dual-stack and IPv6-only networks: real etcd, real kernels,
a dual-stack underlay (198.18.0.0/24 and fd18::/64), pods pinging over IPv6."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface

import pytest

from flannelish.kernel.netlink import nexthop_id
from flannelish.testing.etcd import EtcdMember, start_etcd
from flannelish.testing.flannel import DUAL, FLANNEL_KEY, V6ONLY
from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run
from flannelish.testing.underlay import UNDERLAY_NETWORK6, Host, Underlay

from .conftest import PREFIX, daemon_starter
from .helpers import VENV_BIN, DaemonProc, link_details, ping, wait_for


@pytest.fixture
def underlay6(netns_factory: NetnsFactory) -> Underlay:
    return Underlay(netns_factory, network6=UNDERLAY_NETWORK6).create()


@pytest.fixture
def etcd6(underlay6: Underlay) -> Iterator[EtcdMember]:
    member = start_etcd(name="ul6-etcd", host=str(underlay6.gateway), netns=underlay6.netns)
    try:
        yield member
    finally:
        member.destroy()


@pytest.fixture
def daemons6(
    underlay6: Underlay, etcd6: EtcdMember, tmp_path
) -> Iterator[Callable[..., list[DaemonProc]]]:
    """daemons6(n, config, *flags) -> n ready daemons on the IPv6 underlay."""
    with contextmanager(daemon_starter)(underlay6, etcd6, tmp_path, None, DaemonProc) as started:
        yield lambda n, config, *flags: started(n, *flags, config=config)


def subnet6(d: DaemonProc) -> IPv6Network:
    return IPv6Interface(d.env()["FLANNEL_IPV6_SUBNET"]).network


def add_pod6(factory: NetnsFactory, host: Host, d: DaemonProc, short: str, mtu: int) -> str:
    """A pod with <v6 subnet>::2 (and <v4 subnet>.2 in dual-stack) behind a routed veth."""
    pod = factory.create(short)
    veth = f"v{short}"[:15]
    for ns in (host.netns, pod):  # no duplicate address detection: addresses usable at once
        for conf in ("all", "default"):
            run(["sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0"], netns=ns)
    host.run("ip", "link", "add", veth, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
             "mtu", str(mtu), "netns", pod)  # fmt: skip
    host.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    p = ["ip", "-n", pod]
    s6 = subnet6(d)
    host.run("ip", "addr", "add", f"{s6.network_address + 1}/64", "dev", veth, "nodad")
    run([*p, "addr", "add", f"{s6.network_address + 2}/64", "dev", "eth0", "nodad"])
    if "FLANNEL_SUBNET" in d.env():
        s4 = IPv4Interface(d.env()["FLANNEL_SUBNET"]).network
        host.run("ip", "addr", "add", f"{s4.network_address + 1}/{s4.prefixlen}", "dev", veth)
        run([*p, "addr", "add", f"{s4.network_address + 2}/{s4.prefixlen}", "dev", "eth0"])
    host.run("ip", "link", "set", veth, "up")
    run([*p, "link", "set", "eth0", "up"])
    run([*p, "-6", "route", "add", "default", "via", str(s6.network_address + 1)])
    if "FLANNEL_SUBNET" in d.env():
        run([*p, "route", "add", "default", "via", str(s4.network_address + 1)])
    return pod


def v6_state(host: Host) -> dict[str, list]:
    dev = "flannel-v6.1"
    neigh = json.loads(host.run("ip", "-6", "-j", "neigh", "show", "dev", dev).stdout or "[]")
    fdb = json.loads(host.run("bridge", "-j", "fdb", "show", "dev", dev).stdout or "[]")
    routes = json.loads(host.run("ip", "-6", "-j", "route", "show", "proto", "70").stdout or "[]")
    return {
        "neigh": sorted((n["dst"], n.get("lladdr")) for n in neigh if "PERMANENT" in n["state"]),
        "fdb": sorted((f["mac"], f.get("dst")) for f in fdb if f.get("dst")),
        "route": sorted((r["dst"], r.get("gateway"), r.get("dev")) for r in routes),
    }


def leases(etcd: EtcdMember) -> dict[str, dict]:
    out = etcd.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "-w", "json").stdout
    import base64

    kvs = json.loads(out).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
        for kv in kvs
    }


def test_dual_stack_pods_ping_over_ipv4_and_ipv6(daemons6, etcd6, netns_factory):
    a, b = daemons6(2, DUAL)
    env = a.env()
    # subnet.env exactly as Flannel writes it (docs/flannel-compat.md §6 and §14).
    assert list(env) == [
        "FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET",
        "FLANNEL_MTU", "FLANNEL_IPMASQ",
    ]  # fmt: skip
    assert env["FLANNEL_IPV6_NETWORK"] == "fd44::/48" and env["FLANNEL_MTU"] == "1430"
    assert env["FLANNEL_IPV6_SUBNET"].endswith("::1/64")
    info = link_details(a.host, "flannel-v6.1")
    assert info["mtu"] == 1430 and info["linkinfo"]["info_data"]["local6"] == str(a.host.ip6)
    assert link_details(a.host, "flannel.1")["mtu"] == 1450
    # Keys and values in Flannel's format.
    found = leases(etcd6)
    assert len(found) == 2
    for key, value in found.items():
        m = FLANNEL_KEY.search(key)
        assert m is not None and m.group(3) is not None, key
        assert value["PublicIPv6"].startswith("fd18::") and "VtepMAC" in value["BackendV6Data"]
    want = sorted((str(subnet6(b)), str(subnet6(b).network_address), "flannel-v6.1") for _ in [0])
    wait_for(lambda: v6_state(a.host)["route"] == want, 10, what="IPv6 route on a")
    pa = add_pod6(netns_factory, a.host, a, "pa", 1430)
    add_pod6(netns_factory, b.host, b, "pb", 1430)
    # The first packets wait for neighbour discovery on the fresh veths.
    wait_for(lambda: ping(pa, subnet6(b).network_address + 2), 5, what="pod a -> pod b, IPv6")
    assert ping(pa, IPv4Interface(b.env()["FLANNEL_SUBNET"]).network.network_address + 2)
    # A full-size IPv6 packet fits the -70 MTU (Flannel's -50 would not, #1781).
    big = run(["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", str(1430 - 48),
               str(subnet6(b).network_address + 2)], netns=pa, check=False)  # fmt: skip
    assert big.returncode == 0, big.stdout


def test_ipv6_only_nodes_get_distinct_leases_and_pods_ping(daemons6, etcd6, netns_factory):
    a, b = daemons6(2, V6ONLY)
    env = a.env()
    assert list(env) == ["FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU",
                         "FLANNEL_IPMASQ"]  # fmt: skip
    assert env["FLANNEL_MTU"] == "1430"
    assert subnet6(a) != subnet6(b)  # upstream both would take one lease (PublicIP 0.0.0.0)
    found = leases(etcd6)
    assert len(found) == 2 and all(k.split("/")[-1].startswith("0.0.0.0-0&fd44:") for k in found)
    assert all(v["PublicIP"] == "0.0.0.0" and "BackendData" not in v for v in found.values())
    assert a.host.run("ip", "link", "show", "flannel.1", check=False).returncode != 0
    wait_for(lambda: len(v6_state(a.host)["route"]) == 1, 10, what="IPv6 route on a")
    pa = add_pod6(netns_factory, a.host, a, "pa", 1430)
    add_pod6(netns_factory, b.host, b, "pb", 1430)
    wait_for(lambda: ping(pa, subnet6(b).network_address + 2), 5, what="pod a -> pod b, IPv6")


def test_deleted_ipv6_route_neigh_and_fdb_come_back_within_a_second(daemons6):
    a, b = daemons6(2, DUAL)
    wait_for(lambda: len(v6_state(a.host)["route"]) == 1, 10, what="IPv6 route")
    before = v6_state(a.host)
    gw, mac = before["neigh"][0]
    a.host.run("ip", "-6", "route", "del", str(subnet6(b)), "proto", "70")
    a.host.run("ip", "-6", "neigh", "del", gw, "dev", "flannel-v6.1")
    a.host.run("bridge", "fdb", "del", mac, "dev", "flannel-v6.1", "dst", str(b.host.ip6))
    t0 = time.monotonic()
    wait_for(lambda: v6_state(a.host) == before, 1.0, 0.02, what="IPv6 repair")
    assert time.monotonic() - t0 < 1.0


def test_restart_keeps_the_ipv6_data_path_with_no_lost_ping(daemons6, netns_factory):
    a, b = daemons6(2, DUAL)
    wait_for(lambda: len(v6_state(a.host)["route"]) == 1, 10, what="IPv6 route")
    pa = add_pod6(netns_factory, a.host, a, "pa", 1430)
    add_pod6(netns_factory, b.host, b, "pb", 1430)
    mac6 = link_details(a.host, "flannel-v6.1")["address"]
    s6 = subnet6(a)
    wait_for(lambda: ping(pa, subnet6(b).network_address + 2), 5, what="IPv6 path")
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", pa, "ping", "-6", "-q", "-i", "0.05", "-c", "100", "-W", "1",
         str(subnet6(b).network_address + 2)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)
    assert a.stop() == 0
    a.start().wait_ready()
    out, _ = pinger.communicate(timeout=20)
    assert " 0% packet loss" in out, out
    assert subnet6(a) == s6 and link_details(a.host, "flannel-v6.1")["address"] == mac6
    log = a.log_path.read_text()
    assert '"op": "delete"' not in log and "rebuilding" not in log


def test_a_flannel_written_dual_stack_lease_is_programmed(daemons6, etcd6):
    (a,) = daemons6(1, DUAL)
    key = f"{PREFIX}/subnets/10.244.250.0-24&fd44:0:0:fa::-64"
    value = (
        '{"PublicIP":"198.18.0.99","PublicIPv6":"fd18::99","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"},'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:11:22:33:44:66"}}'
    )
    etcd6.etcdctl("put", key, value)
    want = {
        "neigh": [("fd44:0:0:fa::", "0e:11:22:33:44:66")],
        "fdb": [("0e:11:22:33:44:66", "fd18::99")],
        "route": [("fd44:0:0:fa::/64", "fd44:0:0:fa::", "flannel-v6.1")],
    }
    wait_for(lambda: v6_state(a.host) == want, 5, what="flannel's lease programmed")
    routes4 = a.host.run("ip", "-4", "route", "show", "proto", "70").stdout
    nhid = nexthop_id(IPv4Network("10.244.250.0/24"))  # the IPv4 route through a nexthop
    assert f"10.244.250.0/24 nhid {nhid} via 10.244.250.0 dev flannel.1 onlink" in routes4
    etcd6.etcdctl("del", key)
    wait_for(lambda: v6_state(a.host)["route"] == [], 5, what="removed")
    assert IPv4Network("10.244.250.0/24")  # (the IPv4 half goes too)
    assert "10.244.250.0" not in a.host.run("ip", "-4", "route", "show", "proto", "70").stdout


HOSTGW_V6 = V6ONLY.replace('"vxlan"', '"host-gw"')


def test_host_gw_over_ipv6_routes_via_public_ipv6(daemons6, netns_factory):
    a, b = daemons6(2, HOSTGW_V6)
    assert a.env()["FLANNEL_MTU"] == "1500"
    want = [(str(subnet6(b)), str(b.host.ip6), "eth0")]

    def routes() -> list:
        out = a.host.run("ip", "-6", "-j", "route", "show", "proto", "70").stdout
        return sorted((r["dst"], r.get("gateway"), r.get("dev")) for r in json.loads(out or "[]"))

    wait_for(lambda: routes() == want, 10, what="host-gw IPv6 route")
    pa = add_pod6(netns_factory, a.host, a, "pa", 1500)
    add_pod6(netns_factory, b.host, b, "pb", 1500)
    wait_for(lambda: ping(pa, subnet6(b).network_address + 2), 5, what="pod a -> pod b, host-gw")


def kernel_passes(d: DaemonProc) -> list[str]:
    """The daemon's debug lines for kernel notifications that cost a full pass."""
    return [
        line for line in d.log_path.read_text().splitlines() if "kernel change: full pass" in line
    ]


def test_ipv6_deletions_are_identified_like_ipv4_ones(daemons6, etcd6):
    """Our own IPv6 deletions (a peer's lease removed) come back as kernel notifications
    and cost no full pass; a hand-deleted IPv6 entry of a current peer does, and is
    repaired by it (the same mechanism as IPv4)."""
    # A 30 s resync: every pass in the window comes from a notification.
    (a,) = daemons6(1, DUAL, "--resync-interval", "30", "-v", "1")
    key = f"{PREFIX}/subnets/10.244.250.0-24&fd44:0:0:fa::-64"
    value = (
        '{"PublicIP":"198.18.0.99","PublicIPv6":"fd18::99","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"},'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:11:22:33:44:66"}}'
    )
    etcd6.etcdctl("put", key, value)
    wait_for(lambda: len(v6_state(a.host)["route"]) == 1, 5, what="peer programmed")
    time.sleep(1.0)  # past the start-up passes
    before = len(kernel_passes(a))
    etcd6.etcdctl("del", key)
    wait_for(lambda: v6_state(a.host) == {"neigh": [], "fdb": [], "route": []}, 5,
             what="peer removed")  # fmt: skip
    time.sleep(1.5)  # the notifications of those deletions have arrived
    assert kernel_passes(a)[before:] == []
    # A hand-deleted IPv6 route and neighbour of a current peer: repaired by a full pass.
    etcd6.etcdctl("put", key, value)
    wait_for(lambda: len(v6_state(a.host)["route"]) == 1, 5, what="peer programmed again")
    want = v6_state(a.host)
    time.sleep(1.0)
    before = len(kernel_passes(a))
    a.host.run("ip", "-6", "route", "del", "fd44:0:0:fa::/64", "proto", "70")
    wait_for(lambda: v6_state(a.host) == want, 2, 0.02, what="IPv6 route repaired")
    a.host.run("ip", "-6", "neigh", "del", "fd44:0:0:fa::", "dev", "flannel-v6.1")
    wait_for(lambda: v6_state(a.host) == want, 2, 0.02, what="IPv6 neighbour repaired")
    passes = " ".join(kernel_passes(a)[before:])
    assert "fd44:0:0:fa::/64" in passes and "fd44:0:0:fa::" in passes


def test_status_shows_each_family_s_subnet_device_and_peers(daemons6):
    """`flannelish status` and /status: a line per family with our lease half, the
    family's device (MTU, VTEP MAC) and its programmed peers; /metrics counts per family."""
    port = "10253"
    a, b = daemons6(2, DUAL, "--healthz-ip", "127.0.0.1", "--healthz-port", port)
    wait_for(lambda: len(v6_state(a.host)["route"]) == 1, 10, what="IPv6 route on a")
    s4 = IPv4Interface(a.env()["FLANNEL_SUBNET"]).network
    mac4 = link_details(a.host, "flannel.1")["address"]
    mac6 = link_details(a.host, "flannel-v6.1")["address"]
    flannelish = str(VENV_BIN / "flannelish")

    def doc() -> dict:
        out = a.host.run(flannelish, "status", "--json", "--healthz-port", port, check=False)
        return json.loads(out.stdout)

    wait_for(lambda: doc().get("by_family", {}).get("ipv6", {}).get("peers") == 1, 10,
             what="both families reported")  # fmt: skip
    assert doc()["by_family"] == {
        "ipv4": {"subnet": str(s4), "network": "10.244.0.0/16", "public_ip": str(a.host.ip),
                 "device": "flannel.1", "mtu": 1450, "vtep_mac": mac4, "peers": 1},
        "ipv6": {"subnet": str(subnet6(a)), "network": "fd44::/48", "public_ip": str(a.host.ip6),
                 "device": "flannel-v6.1", "mtu": 1430, "vtep_mac": mac6, "peers": 1},
    }  # fmt: skip
    text = a.host.run(flannelish, "status", "--healthz-port", port).stdout
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert (f"{s4} of 10.244.0.0/16 via {a.host.ip}, device flannel.1 (MTU 1450, VTEP MAC "
            f"{mac4}), 1 peer(s) programmed") in lines["ipv4"]  # fmt: skip
    assert (f"{subnet6(a)} of fd44::/48 via {a.host.ip6}, device flannel-v6.1 (MTU 1430, "
            f"VTEP MAC {mac6}), 1 peer(s) programmed") in lines["ipv6"]  # fmt: skip
    metrics = a.host.run(sys.executable, "-c", "import urllib.request as u; print(u.urlopen("
                         f"'http://127.0.0.1:{port}/metrics').read().decode())").stdout  # fmt: skip
    assert 'flannelish_peers_programmed_family{family="ipv4"} 1.0' in metrics
    assert 'flannelish_peers_programmed_family{family="ipv6"} 1.0' in metrics
    assert b.env()["FLANNEL_MTU"] == "1430"


def test_iface_can_reach_an_ipv6_address_picks_the_underlay(daemons6, etcd6, underlay6):
    """flanneld's -iface-can-reach with an IPv6 destination on an IPv6-only node: the
    interface and source of `ip -6 route get`, advertised as PublicIPv6."""
    (a,) = daemons6(1, V6ONLY, f"-iface-can-reach={underlay6.gateway6}")
    [value] = leases(etcd6).values()
    assert value["PublicIP"] == "0.0.0.0" and value["PublicIPv6"] == str(a.host.ip6)
    assert '"msg": "using interface", "iface": "eth0"' in a.log_path.read_text()
    info = link_details(a.host, "flannel-v6.1")
    assert info["linkinfo"]["info_data"]["local6"] == str(a.host.ip6)


# --- pods attached by the real CNI plugin, through each daemon's CNI server -----

_RECV6 = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 9999))
print("ready", flush=True)
s.settimeout(5)
data, addr = s.recvfrom(2048)
print(addr[0], flush=True)
"""
_SEND6 = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(b"hi", (sys.argv[1], 9999))
"""


def cni(d: DaemonProc, command: str, pod: str, cid: str, **extra: object) -> str:
    """One plugin call in `d`'s host namespace; node mode from `d`'s subnet.env.

    No ``daemonSocket``: the plugin finds the daemon's CNI server beside subnet.env.
    """
    conf = {"cniVersion": "1.1.0", "name": "v6net", "type": "flannelish-cni",
            "subnetFile": str(d.subnet_file), "ipam": {"dataDir": str(d.dir / "ipam")},
            **extra}  # fmt: skip
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni"}  # fmt: skip
    proc = subprocess.run(
        ["ip", "netns", "exec", d.host.netns, str(VENV_BIN / "flannelish-cni")],
        input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{command} failed: {proc.stdout} {proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("config", [DUAL, V6ONLY], ids=["dual", "ipv6"])
def test_cni_pods_get_addresses_per_family_and_reach_the_other_node(
    daemons6, netns_factory, config
):
    a, b = daemons6(2, config, "--ip-masq")
    dual = config == DUAL
    wait_for(lambda: len(v6_state(a.host)["route"]) == 1, 10, what="IPv6 route on a")
    pods, ips = {}, {}
    for d, name in ((a, "ca"), (b, "cb")):
        pods[name] = netns_factory.create(name)
        res = json.loads(cni(d, "ADD", pods[name], name))
        addrs = [ip_interface(ip["address"]) for ip in res["ips"]]
        assert [x.version for x in addrs] == ([4, 6] if dual else [6]), res
        assert addrs[-1] in subnet6(d)
        if dual:
            assert addrs[0] in IPv4Interface(d.env()["FLANNEL_SUBNET"]).network
        ips[name] = addrs
        cni(d, "CHECK", pods[name], name, prevResult=res)
    pa, v6b = pods["ca"], ips["cb"][-1].ip
    wait_for(lambda: ping(pa, v6b), 5, what="pod a -> pod b over IPv6")
    if dual:
        assert ping(pa, ips["cb"][0].ip)
    # The daemons masquerade (--ip-masq) in both families, never pod to pod.
    recv = subprocess.Popen(["ip", "netns", "exec", pods["cb"], sys.executable, "-c", _RECV6],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        run(["ip", "netns", "exec", pa, sys.executable, "-c", _SEND6, str(v6b)])
        seen, _ = recv.communicate(timeout=15)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert seen.strip() == str(ips["ca"][-1].ip)
    # IPv6-only nodes get their ip6 table too (and no ip one).
    has = {fam: a.host.run("nft", "list", "table", fam, "flannelish", check=False).returncode == 0
           for fam in ("ip", "ip6")}  # fmt: skip
    assert has == {"ip": dual, "ip6": True}
    for d, name in ((a, "ca"), (b, "cb")):
        cni(d, "DEL", pods[name], name)
        assert "eth0" not in run(["ip", "-n", pods[name], "link"]).stdout
