"""Dual-stack and IPv6-only pods from subnet.env (FLANNEL_IPV6_NETWORK / FLANNEL_IPV6_SUBNET).

Real namespaces, the real executable, both execution paths and every CNI
version (the ``cni`` fixture).  Lab ranges only: pods 10.244.0.0/16 and
fd44::/48 (node subnets /24 and /64), underlay fd18::/64.  Conformance items
35-37 of docs/cni-compat.md §9.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time

import pytest

from flannelish.testing.proc import run

from .conftest import SUBNET, Cni

V6_NETWORK = "fd44::/48"
V6_SUBNET = "fd44:0:0:7::"  # this node's /64
V6_GW = f"{V6_SUBNET}1"
FAMILIES = ("dual", "ipv6")


def write_env(cni: Cni, family: str, ipmasq: bool = True) -> None:
    lines = []
    if family == "dual":
        lines += ["FLANNEL_NETWORK=10.244.0.0/16", f"FLANNEL_SUBNET={SUBNET}.1/24"]
    lines += [f"FLANNEL_IPV6_NETWORK={V6_NETWORK}", f"FLANNEL_IPV6_SUBNET={V6_GW}/64"]
    lines += ["FLANNEL_MTU=1430", f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}"]
    cni.run_dir.mkdir(exist_ok=True)
    (cni.run_dir / "subnet.env").write_text("".join(f"{line}\n" for line in lines))


def v6_addrs(cni: Cni, netns: str, dev: str) -> list[dict]:
    doc = json.loads(cni.ip(netns, "-j", "-6", "addr", "show", dev))
    return [a for a in doc[0]["addr_info"] if a["scope"] == "global"]


def store_ips(cni: Cni) -> list[str]:
    out = []
    for name in cni.store_files():
        try:
            out.append(str(ipaddress.ip_address(name)))
        except ValueError:
            continue
    return out


def ping6(netns: str, dst: str, count: int = 1) -> bool:
    cmd = ["ip", "netns", "exec", netns, "ping", "-6", "-c", str(count), "-i", "0.2", "-W", "1"]
    return run([*cmd, dst], check=False).returncode == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_add_gives_an_address_per_family_usable_at_once(cni, family):
    """ADD, CHECK, DEL for a dual-stack / IPv6-only pod; no DAD wait anywhere."""
    write_env(cni, family)
    pod = cni.pod()
    res = cni.add(pod)
    addresses = [ip["address"] for ip in res["ips"]]
    if family == "dual":
        assert addresses[0] == f"{SUBNET}.2/24" and res["ips"][0]["gateway"] == f"{SUBNET}.1"
    v6 = ipaddress.ip_interface(addresses[-1])
    assert v6.version == 6 and v6.network == ipaddress.ip_network(f"{V6_SUBNET}/64")
    assert res["ips"][-1]["gateway"] == V6_GW
    assert len(addresses) == (2 if family == "dual" else 1)
    if cni.version == "0.4.0":
        assert [ip["version"] for ip in res["ips"]] == (["4", "6"] if family == "dual" else ["6"])
    else:
        assert all("version" not in ip for ip in res["ips"])
    assert all(ip["interface"] == 2 for ip in res["ips"])
    routes = {(r["dst"], r.get("gw")) for r in res["routes"]}
    assert (V6_NETWORK, V6_GW) in routes and ("::/0", V6_GW) in routes
    assert (("10.244.0.0/16", f"{SUBNET}.1") in routes) == (family == "dual")

    # No DAD: the pod's address and the bridge's gateway are usable as ADD returns.
    (pod_addr,) = v6_addrs(cni, pod, "eth0")
    assert f"{pod_addr['local']}/{pod_addr['prefixlen']}" == str(v6)
    assert not pod_addr.get("tentative") and not pod_addr.get("dadfailed")
    bridge = v6_addrs(cni, cni.host, "cni0")
    assert [(a["local"], a["prefixlen"]) for a in bridge] == [(V6_GW, 64)]
    assert not bridge[0].get("tentative")
    assert (
        run(
            ["ip", "netns", "exec", cni.host, "sysctl", "-n", "net.ipv6.conf.cni0.accept_dad"]
        ).stdout.strip()
        == "0"
    )
    assert (
        run(
            ["ip", "netns", "exec", pod, "sysctl", "-n", "net.ipv6.conf.eth0.accept_dad"]
        ).stdout.strip()
        == "0"
    )
    assert ping6(pod, V6_GW)  # at once: no wait between ADD and the first packet
    pod_routes = cni.ip(pod, "-6", "route")
    assert f"{V6_NETWORK} via {V6_GW}" in pod_routes and f"default via {V6_GW}" in pod_routes
    assert sorted(store_ips(cni)) == sorted(a.split("/")[0] for a in addresses)

    prev = dict(res)
    cni.call("CHECK", cni.conf(prevResult=prev), netns=pod).ok()
    run(["ip", "-n", pod, "addr", "del", str(v6), "dev", "eth0"])
    failed = cni.call("CHECK", cni.conf(prevResult=prev), netns=pod).error()
    assert f"Failed to match addr {v6}" in failed["msg"]

    cni.delete(pod)
    assert store_ips(cni) == []
    assert "eth0" not in cni.links(pod)
    cni.delete(pod)  # idempotent


@pytest.mark.parametrize("family", FAMILIES)
def test_two_pods_reach_each_other_and_the_gateway_over_ipv6(cni_latest, family):
    cni = cni_latest
    write_env(cni, family)
    pods = [cni.pod(), cni.pod()]
    started = time.monotonic()
    ips = []
    for i, pod in enumerate(pods):
        res = cni.add(pod, cid=f"c{i}")
        ips.append(ipaddress.ip_interface(res["ips"][-1]["address"]).ip)
    assert ips[0] != ips[1]
    assert ping6(pods[0], str(ips[1])) and ping6(pods[1], str(ips[0]))
    assert ping6(pods[1], V6_GW)
    # Two ADDs and three pings well under one DAD period (1 s + RFC 7217 delays).
    assert time.monotonic() - started < 2.5
    for i, pod in enumerate(pods):
        cni.delete(pod, cid=f"c{i}")


def test_gc_releases_both_families_of_attachments_not_listed(cni_latest):
    cni = cni_latest
    write_env(cni, "dual", ipmasq=False)  # the plugin masquerades: NAT chains in ip and ip6
    keep, drop = cni.pod(), cni.pod()
    cni.add(keep, cid="keep")
    cni.add(drop, cid="drop")
    assert len(store_ips(cni)) == 4
    tables = run(["ip", "netns", "exec", cni.host, "nft", "list", "tables"]).stdout
    assert "table ip flannelish_cni" in tables and "table ip6 flannelish_cni" in tables
    gc = cni.conf(**{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    cni.call("GC", gc, cid=None, ifname=None).ok()
    left = store_ips(cni)
    assert len(left) == 2 and {ipaddress.ip_address(ip).version for ip in left} == {4, 6}
    ruleset = run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout
    from flannelish.cni.masq import chain_name

    assert chain_name(cni.name, "drop") not in ruleset
    assert ruleset.count(chain_name(cni.name, "keep")) >= 4  # a map entry + chain per family
    cni.delete(keep, cid="keep")
    assert "CNI-" not in run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout


# --- masquerade --------------------------------------------------------------

_RECV6 = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 9999))
print("ready", flush=True)
s.settimeout(3)
try:
    while True:
        data, addr = s.recvfrom(2048)
        print(addr[0], data.decode(), flush=True)
except socket.timeout:
    pass
"""

_SEND6 = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(sys.argv[2].encode(), (sys.argv[1], 9999))
"""


def test_ipv6_masquerade_nats_to_the_world_never_to_other_pods(cni_latest, netns_factory):
    """Pod -> outside is NATed to the node's address; pod -> another node's pod is not."""
    import subprocess
    import sys

    cni = cni_latest
    write_env(cni, "ipv6", ipmasq=False)  # the daemon does not masquerade: the plugin does
    out = netns_factory.create("out")
    # The underlay: host fd18::1 <-> out fd18::2; out plays the world (fd18::2) and
    # another node whose pod is fd44:0:0:9::2 (routed there, inside the pod network).
    run(["ip", "-n", cni.host, "link", "add", "ul0", "type", "veth", "peer", "ul0", "netns", out])
    for ns, addr in ((cni.host, "fd18::1/64"), (out, "fd18::2/64")):
        run(["ip", "-n", ns, "addr", "add", addr, "dev", "ul0", "nodad"])
        run(["ip", "-n", ns, "link", "set", "ul0", "up"])
    run(["ip", "-n", out, "addr", "add", "fd44:0:0:9::2/128", "dev", "lo"])
    run(["ip", "-n", out, "link", "set", "lo", "up"])
    run(["ip", "-n", out, "-6", "route", "add", "fd44::/48", "via", "fd18::1"])
    run(["ip", "-n", cni.host, "-6", "route", "add", "fd44:0:0:9::/64", "via", "fd18::2"])
    pod = cni.pod()
    pod_ip = ipaddress.ip_interface(cni.add(pod)["ips"][0]["address"]).ip

    recv = subprocess.Popen(
        ["ip", "netns", "exec", out, sys.executable, "-c", _RECV6],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        for dst, tag in (("fd18::2", "world"), ("fd44:0:0:9::2", "pod")):
            run(["ip", "netns", "exec", pod, sys.executable, "-c", _SEND6, dst, tag])
        seen, _ = recv.communicate(timeout=10)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    by_tag = {line.split()[1]: line.split()[0] for line in seen.splitlines() if line}
    assert by_tag == {"world": "fd18::1", "pod": str(pod_ip)}, seen
    cni.delete(pod)
    assert "CNI-" not in run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout
    assert not os.path.exists(cni.store / str(pod_ip))


# --- the upstream flannel CNI meta-plugin reading our subnet.env ---------------


def _flannel_plugin() -> str | None:
    """Upstream flannel's CNI plugin, if this machine has one (Debian does not ship it)."""
    for path in (
        os.environ.get("FLANNELISH_FLANNEL_CNI", ""),
        "/usr/lib/cni/flannel",
        "/opt/cni/bin/flannel",
    ):
        if path and os.access(path, os.X_OK):
            return path
    return None


def test_upstream_flannel_plugin_attaches_a_dual_stack_pod_from_our_subnet_env(cni_inproc):
    """flannel (delegating to the reference bridge + host-local) reads FLANNEL_IPV6_* from our file.

    Debian's containernetworking-plugins has no flannel plugin: point
    FLANNELISH_FLANNEL_CNI at a build of flannel-io/cni-plugin to run this.
    """
    from ipaddress import IPv4Network, IPv6Network

    from flannelish.subnet_env import SubnetEnv, write_subnet_env

    binary = _flannel_plugin()
    if binary is None:
        pytest.skip("no upstream flannel CNI plugin (set FLANNELISH_FLANNEL_CNI)")
    cni = cni_inproc
    write_subnet_env(  # our writer, exactly as the daemon writes the file
        cni.run_dir / "subnet.env",
        SubnetEnv(
            IPv4Network("10.244.0.0/16"),
            IPv4Network(f"{SUBNET}.0/24"),
            1430,
            True,
            IPv6Network(V6_NETWORK),
            IPv6Network(f"{V6_SUBNET}/64"),
        ),
    )
    conf = {
        "cniVersion": "1.0.0",
        "name": "upstream",
        "type": "flannel",
        "subnetFile": str(cni.run_dir / "subnet.env"),
        "dataDir": str(cni.tmp / "flannel-data"),
        "ipam": {"dataDir": str(cni.data_dir)},
        "delegate": {"bridge": "cni1", "isDefaultGateway": True},
    }
    pod = cni.pod()
    res = cni.call("ADD", conf, netns=pod, binary=binary).ok().json
    addresses = [ipaddress.ip_interface(ip["address"]) for ip in res["ips"]]
    assert [a.version for a in addresses] == [4, 6], res
    assert addresses[0] in ipaddress.ip_network(f"{SUBNET}.0/24")
    assert addresses[1] in ipaddress.ip_network(f"{V6_SUBNET}/64")
    assert V6_GW in cni.ip(cni.host, "-6", "addr", "show", "cni1")
    assert f"{V6_NETWORK} via {V6_GW}" in cni.ip(pod, "-6", "route")
    # The reference bridge leaves the gateway to DAD (tentative for a second or
    # two); ours is usable at once (test_add_gives_an_address_per_family_usable_at_once).
    deadline = time.monotonic() + 10
    while not ping6(pod, V6_GW) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ping6(pod, V6_GW)
    cni.call("DEL", conf, netns=pod, binary=binary).ok()
    assert "eth0" not in cni.links(pod)


def _network_becomes_ipv4_only(cni: Cni) -> None:
    lines = ["FLANNEL_NETWORK=10.244.0.0/16", f"FLANNEL_SUBNET={SUBNET}.1/24"]
    lines += ["FLANNEL_MTU=1450", "FLANNEL_IPMASQ=false"]
    (cni.run_dir / "subnet.env").write_text("".join(f"{line}\n" for line in lines))


def test_del_after_the_network_lost_ipv6_removes_the_pods_ipv6_nat_too(cni_latest):
    cni = cni_latest
    write_env(cni, "dual", ipmasq=False)  # the plugin masquerades: NAT chains in ip and ip6
    pod = cni.pod()
    cni.add(pod)
    _network_becomes_ipv4_only(cni)
    cni.delete(pod)
    ruleset = run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout
    assert "CNI-" not in ruleset
    assert store_ips(cni) == []


def test_gc_after_the_network_lost_ipv6_removes_the_pods_ipv6_nat_too(cni_latest):
    cni = cni_latest
    write_env(cni, "dual", ipmasq=False)
    pod = cni.pod()
    cni.add(pod, cid="gone")
    _network_becomes_ipv4_only(cni)
    gc = cni.conf(**{"cni.dev/valid-attachments": []})
    cni.call("GC", gc, cid=None, ifname=None).ok()
    ruleset = run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout
    from flannelish.cni.masq import chain_name

    assert chain_name(cni.name, "gone") not in ruleset
