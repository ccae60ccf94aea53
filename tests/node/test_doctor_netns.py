"""`flannelish doctor` inside a node namespace: a broken MTU, a blocked port, bad leases."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FLANNELISH = str(Path(sys.executable).with_name("flannelish"))


def doctor(netns: str, *args: str):
    env = dict(os.environ)
    env.pop("FLANNELD_ETCD_ENDPOINTS", None)
    import subprocess

    return subprocess.run(
        ["ip", "netns", "exec", netns, FLANNELISH, "doctor", "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def findings(result) -> dict[str, list[dict]]:
    doc = json.loads(result.stdout)
    return {c["name"]: c["findings"] for c in doc["checks"]}


def test_doctor_finds_a_broken_mtu_and_a_blocked_vxlan_port_then_a_clean_node(
    underlay, underlay_etcd, tmp_path
):
    host = underlay.add_host("n1", 1)
    h = host.run
    h("sysctl", "-qw", "net.ipv4.ip_forward=1")
    # Deliberately broken: the underlay MTU shrank under an existing overlay device
    # (the kernel refuses a too-big vxlan MTU at creation, but not this).
    h("ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", str(host.ip),
      "dev", "eth0", "dstport", "8472", "nolearning")  # fmt: skip
    h("ip", "link", "set", "flannel.1", "mtu", "1450", "up")
    h("ip", "link", "set", "eth0", "mtu", "1400")
    h("nft", "add table inet fw; add chain inet fw in { type filter hook input priority 0; };"
      " add rule inet fw in udp dport 8472 drop")  # fmt: skip
    env_file = tmp_path / "subnet.env"
    env_file.write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    # Leases as a daemon pair would write them; two nodes share one PublicIP.
    for subnet, ip in (("10.244.1.0-24", "198.18.0.1"), ("10.244.2.0-24", "198.18.0.2"),
                       ("10.244.3.0-24", "198.18.0.2")):  # fmt: skip
        value = json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan"})
        underlay_etcd.etcdctl("put", f"/coreos.com/network/subnets/{subnet}", value)
    etcd_flags = ["--etcd-endpoints", underlay_etcd.client_url, "--subnet-file", str(env_file)]

    result = doctor(host.netns, *etcd_flags)
    assert result.returncode == 1, result.stderr
    found = findings(result)
    mtu = " | ".join(f["message"] for f in found["mtu"])
    assert "flannel.1 MTU 1450 exceeds eth0 MTU 1400 - 50 = 1350" in mtu
    fw = [f for f in found["firewall"] if f["severity"] == "error"]
    assert fw and "from peer 198.18.0.2 is dropped by table inet fw, chain in" in fw[0]["message"]
    assert any("PublicIP 198.18.0.2 is advertised by 2 leases" in f["message"]
               for f in found["leases"])  # fmt: skip

    # Fix the node: right MTU, firewall rule gone, duplicate lease removed.
    h("ip", "link", "set", "eth0", "mtu", "1500")
    h("nft", "delete", "table", "inet", "fw")
    underlay_etcd.etcdctl("del", "/coreos.com/network/subnets/10.244.3.0-24")
    result = doctor(host.netns, *etcd_flags)
    assert result.returncode == 0, result.stdout
    found = findings(result)
    assert found["mtu"] == [] and found["firewall"] == [] and found["leases"] == []

    # A rule nft cannot see: iptables-legacy.
    h("iptables-legacy", "-A", "INPUT", "-p", "udp", "--dport", "8472", "-j", "REJECT")
    result = doctor(host.netns, *etcd_flags)
    assert result.returncode == 1
    (legacy,) = findings(result)["firewall"]
    assert (
        "iptables-legacy rule `-A INPUT -p udp -m udp --dport 8472 -j REJECT" in legacy["message"]
    )
