"""ADD results and the kernel state they describe.

docs/cni-compat.md §9 items 7-14, 16, 28, 30, 32.
"""

from __future__ import annotations

import json
import re

import pytest

from flannelish.testing.proc import run

from .conftest import SUBNET


def test_add_result_has_bridge_host_veth_and_pod_interface_shaped_for_the_version(cni):
    pod = cni.pod()
    res = cni.add(pod)
    assert res["cniVersion"] == cni.version
    names = [i["name"] for i in res["interfaces"]]
    assert names[0] == "cni0" and names[2] == "eth0"
    assert re.fullmatch(r"veth[0-9a-f]{8}", names[1])
    assert "sandbox" not in res["interfaces"][0] and "sandbox" not in res["interfaces"][1]
    assert res["interfaces"][2]["sandbox"] == f"/run/netns/{pod}"
    assert len(res["ips"]) == 1
    ip = res["ips"][0]
    assert ip["interface"] == 2
    assert ip["address"].startswith(f"{SUBNET}.") and ip["address"].endswith("/24")
    assert ip["gateway"] == f"{SUBNET}.1"
    if cni.version == "0.4.0":
        assert ip["version"] == "4"
    else:
        assert "version" not in ip
    has_mtu = all("mtu" in i for i in res["interfaces"])
    assert has_mtu == (cni.version == "1.1.0")
    assert res["dns"] == {}
    # subnet.env defaults: the cluster network and a default route via the gateway
    assert {"dst": "10.244.0.0/16", "gw": f"{SUBNET}.1"} in res["routes"]
    assert {"dst": "0.0.0.0/0", "gw": f"{SUBNET}.1"} in res["routes"]


def test_returned_macs_and_address_match_the_kernel_and_pod_iface_is_up(cni):
    pod = cni.pod()
    res = cni.add(pod)
    bridge, veth, eth0 = res["interfaces"]
    pod_link = cni.link_json(pod, "eth0")
    assert pod_link["address"] == eth0["mac"]
    assert "UP" in pod_link["flags"] and pod_link["mtu"] == 1450
    assert cni.addrs(pod, "eth0") == [res["ips"][0]["address"]]
    assert cni.link_json(cni.host, veth["name"])["address"] == veth["mac"]
    assert cni.link_json(cni.host, "cni0")["address"] == bridge["mac"]
    assert (
        run(
            ["ip", "netns", "exec", pod, "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify"]
        ).stdout.strip()
        == "1"
    )


def test_pod_routes_are_on_link_subnet_plus_cluster_and_default_via_gateway(cni):
    pod = cni.pod()
    cni.add(pod)
    routes = cni.ip(pod, "-4", "route")
    assert f"{SUBNET}.0/24 dev eth0 proto kernel scope link" in routes
    assert f"default via {SUBNET}.1 dev eth0" in routes
    assert f"10.244.0.0/16 via {SUBNET}.1 dev eth0" in routes


def test_standalone_ipam_without_routes_gives_only_the_on_link_route(cni):
    pod = cni.pod()
    res = cni.add(pod, conf=cni.standalone())
    assert "routes" not in res
    assert cni.ip(pod, "-4", "route").strip().startswith("10.244.9.0/24 dev eth0")
    assert "default" not in cni.ip(pod, "-4", "route")


def test_is_default_gateway_adds_a_default_route_with_gw_to_result_and_pod(cni):
    pod = cni.pod()
    res = cni.add(pod, conf=cni.standalone(isDefaultGateway=True))
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.9.1"}]
    assert "default via 10.244.9.1 dev eth0" in cni.ip(pod, "-4", "route")


def test_host_veth_is_an_up_bridge_port_with_mtu_and_hairpin(cni):
    pod = cni.pod()
    res = cni.add(pod, conf=cni.conf(hairpinMode=True, mtu=1400))
    name = res["interfaces"][1]["name"]
    link = cni.link_json(cni.host, name)
    assert len(name) <= 15
    assert link["master"] == "cni0" and "UP" in link["flags"] and link["mtu"] == 1400
    assert link["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert cni.link_json(pod, "eth0")["mtu"] == 1400
    pod2 = cni.pod()
    res2 = cni.add(pod2, cid="ctr2")  # hairpin off by default
    link2 = cni.link_json(cni.host, res2["interfaces"][1]["name"])
    assert link2["linkinfo"]["info_slave_data"]["hairpin"] is False


def test_bridge_is_created_up_with_mtu_and_promisc_only_when_asked(cni):
    pod = cni.pod()
    cni.add(pod, conf=cni.conf(mtu=1400))
    bridge = cni.link_json(cni.host, "cni0")
    assert bridge["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in bridge["flags"] and bridge["mtu"] == 1400
    assert bridge["promiscuity"] == 0
    assert bridge["linkinfo"]["info_data"]["stp_state"] == 0
    pod2 = cni.pod()
    cni.add(pod2, cid="ctr2", conf=cni.standalone(promiscMode=True))
    assert "PROMISC" in cni.link_json(cni.host, "br9")["flags"]


def test_existing_non_bridge_link_with_the_bridge_name_is_an_error(cni):
    run(["ip", "-n", cni.host, "link", "add", "cni0", "type", "veth", "peer", "name", "other"])
    pod = cni.pod()
    doc = cni.call("ADD", cni.conf(), netns=pod).error()
    assert "not a bridge" in doc["msg"]
    assert cni.reserved_ips() == [] and cni.links(pod) == ["lo"]


def test_gateway_on_bridge_and_forwarding_enabled(cni):
    cni.add(cni.pod())
    assert cni.addrs(cni.host, "cni0") == [f"{SUBNET}.1/24"]
    fwd = run(["ip", "netns", "exec", cni.host, "sysctl", "-n", "net.ipv4.ip_forward"])
    assert fwd.stdout.strip() == "1"


def test_different_bridge_address_is_an_error_unless_force_address(cni):
    run(["ip", "-n", cni.host, "link", "add", "cni0", "type", "bridge"])
    run(["ip", "-n", cni.host, "addr", "add", "10.244.200.1/24", "dev", "cni0"])
    pod = cni.pod()
    doc = cni.call("ADD", cni.conf(), netns=pod).error()
    assert "already has an IP address different from" in doc["msg"]
    # the failure came after IPAM and veth creation: both rolled back
    assert cni.reserved_ips() == [] and cni.links(pod) == ["lo"]
    assert [link for link in cni.links(cni.host) if link.startswith("veth")] == []
    cni.add(pod, conf=cni.conf(forceAddress=True))
    assert cni.addrs(cni.host, "cni0") == [f"{SUBNET}.1/24"]


def test_second_add_of_same_container_and_ifname_fails_without_reserving(cni):
    pod = cni.pod()
    cni.add(pod)
    before = cni.reserved_ips()
    doc = cni.call("ADD", cni.conf(), netns=pod).error()
    assert doc["msg"] == "container veth name provided (eth0) already exists"
    other = cni.pod()  # same cid+ifname into another netns: the IPAM duplicate check
    doc = cni.call("ADD", cni.conf(), netns=other).error()
    assert "duplicate allocation is not allowed" in doc["msg"]
    assert cni.reserved_ips() == before and cni.links(other) == ["lo"]


def test_runtime_config_mac_beats_args_mac_beats_cni_args_mac(cni):
    conf = cni.conf(
        args={"cni": {"mac": "0a:58:00:00:00:02"}}, runtimeConfig={"mac": "0a:58:00:00:00:03"}
    )
    env = {"CNI_ARGS": "MAC=0a:58:00:00:00:01"}
    pod = cni.pod()
    res = cni.add(pod, conf=conf, env=env)
    assert res["interfaces"][2]["mac"] == "0a:58:00:00:00:03"
    assert cni.link_json(pod, "eth0")["address"] == "0a:58:00:00:00:03"
    del conf["runtimeConfig"]
    pod2 = cni.pod()
    assert cni.add(pod2, cid="c2", conf=conf, env=env)["interfaces"][2]["mac"].endswith(":02")
    pod3 = cni.pod()
    assert cni.add(pod3, cid="c3", env=env)["interfaces"][2]["mac"].endswith(":01")


def test_netconf_dns_appears_unchanged_in_the_result(cni):
    dns = {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]}
    assert cni.add(cni.pod(), conf=cni.conf(dns=dns))["dns"] == dns


def test_two_pods_on_one_bridge_ping_each_other_and_the_gateway(cni):
    a, b = cni.pod(), cni.pod()
    ip_a = cni.add(a, cid="a")["ips"][0]["address"].split("/")[0]
    ip_b = cni.add(b, cid="b")["ips"][0]["address"].split("/")[0]
    assert ip_a != ip_b
    for src, dst in ((a, ip_b), (b, ip_a), (a, f"{SUBNET}.1")):
        ping = run(
            ["ip", "netns", "exec", src, "ping", "-c", "2", "-W", "1", "-i", "0.2", dst],
            check=False,
        )
        assert " 0% packet loss" in ping.stdout or "1 received" in ping.stdout, ping.stdout


def test_prev_result_is_passed_through_with_our_interfaces_appended(cni):
    prev = {
        "cniVersion": cni.version,
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/x"}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "routes": [{"dst": "192.168.255.0/24"}],
        "dns": {"nameservers": ["1.1.1.1"]},
    }
    if cni.version == "0.4.0":
        prev["ips"][0]["version"] = "4"
    res = cni.add(cni.pod(), conf=cni.conf(prevResult=prev))
    assert res["interfaces"][0]["name"] == "lo"
    assert len(res["interfaces"]) == 4
    assert res["ips"][0]["address"] == "127.0.0.1/8" and res["ips"][1]["interface"] == 3
    assert {"dst": "192.168.255.0/24"} in res["routes"]
    assert res["dns"] == {"nameservers": ["1.1.1.1"]}


def test_dual_stack_range_sets_give_one_address_per_family(cni):
    ipam = {"subnet": "10.244.9.0/24", "ranges": [[{"subnet": "fd00:10:244:9::/64"}]]}
    pod = cni.pod()
    res = cni.add(pod, conf=cni.standalone(ipam))
    addresses = [ip["address"] for ip in res["ips"]]
    assert addresses[0].startswith("10.244.9.") and addresses[1].startswith("fd00:10:244:9::")
    assert res["ips"][1]["gateway"] == "fd00:10:244:9::1"
    if cni.version == "0.4.0":
        assert [ip["version"] for ip in res["ips"]] == ["4", "6"]
    pod_v6 = cni.ip(pod, "-6", "addr", "show", "eth0")
    assert addresses[1] in pod_v6
    assert "fd00:10:244:9::1/64" in cni.ip(cni.host, "-6", "addr", "show", "br9")
    ping = run(
        ["ip", "netns", "exec", pod, "ping", "-6", "-c", "1", "-W", "2", "fd00:10:244:9::1"],
        check=False,
    )
    assert ping.returncode == 0, ping.stdout
    cni.delete(pod, conf=cni.standalone(ipam))
    assert cni.reserved_ips() == []


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1"])
def test_older_supported_versions_get_0_3_shaped_results(cni_latest, version):
    cni = cni_latest
    res = cni.add(cni.pod(), conf=cni.conf(cniVersion=version))
    assert res["cniVersion"] == version
    assert res["ips"][0]["version"] == "4" and res["ips"][0]["interface"] == 2
    assert all("mtu" not in i for i in res["interfaces"])


def _shape(res: dict, pod: str) -> dict:
    """A result with what must differ between two pods (MACs, veth name, address) masked."""
    text = json.dumps(res).replace(f"/run/netns/{pod}", "<netns>")
    doc = json.loads(text)
    for iface in doc["interfaces"]:
        iface["mac"] = "<mac>"
        if iface["name"].startswith("veth"):
            iface["name"] = "<veth>"
    for ip in doc["ips"]:
        ip["address"] = "<address>/" + ip["address"].split("/")[1]
    return doc


def test_daemon_and_in_process_paths_give_identical_results(cni_inproc, tmp_path):
    from flannelish.cni.server import CniServer

    cni = cni_inproc
    sock = str(tmp_path / "own.sock")
    server = CniServer(sock)
    server.start()
    try:
        a, b = cni.pod(), cni.pod()
        via_daemon = cni.add(a, cid="a", conf=cni.conf(daemonSocket=sock))
        in_process = cni.add(b, cid="b")
        assert server.served == 1
        assert _shape(via_daemon, a) == _shape(in_process, b)
        cni.delete(a, cid="a", conf=cni.conf(daemonSocket=sock))
        assert server.served == 2
    finally:
        server.stop()
    cni.delete(b, cid="b")
    assert cni.reserved_ips() == []
