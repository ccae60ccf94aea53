"""docs/cni-compat.md §9 items 15, 17-21, 31: masquerade, CHECK, DEL idempotency, rollback, GC."""

from __future__ import annotations

import json
import os
import subprocess

from flannelish.testing.proc import run

from .conftest import SUBNET


def _nat(cni) -> str:
    return run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout


def _veths(cni) -> list[str]:
    return [link for link in cni.links(cni.host) if link.startswith("veth")]


def test_ip_masq_installs_per_container_nat_chain_and_del_removes_it(cni):
    from flannelish.cni.masq import chain_name

    cni.write_subnet_env(ipmasq=False)  # the daemon does not masquerade: the plugin must
    pod = cni.pod()
    ip = cni.add(pod)["ips"][0]["address"].split("/")[0]
    chain = chain_name(cni.name, "ctr1")
    nat = _nat(cni)
    assert f"{ip} : jump {chain}" in nat
    assert f"ip daddr {SUBNET}.0/24 accept" in nat
    assert "ip daddr 10.244.0.0/16 accept" in nat  # pods on other nodes: never NATed
    assert "ip daddr != 224.0.0.0/4 masquerade" in nat
    assert "type nat hook postrouting" in nat
    cni.delete(pod)
    nat = _nat(cni)
    assert chain not in nat and ip not in nat


def test_check_finds_the_masquerade_rule_and_notices_it_gone(cni):
    from flannelish.cni.masq import TABLE, chain_name

    cni.write_subnet_env(ipmasq=False)
    pod = cni.pod()
    conf = cni.conf(prevResult=cni.add(pod))
    assert cni.call("CHECK", conf, netns=pod).ok().stdout == ""
    chain = chain_name(cni.name, "ctr1")
    run(["ip", "netns", "exec", cni.host, "nft", "flush", "chain", "ip", TABLE, chain])
    doc = cni.call("CHECK", conf, netns=pod).error()
    assert doc["code"] == 999 and doc["msg"] == "masquerade rules of ctr1 missing"
    cni.delete(pod)


def test_no_masquerade_when_the_daemon_masquerades(cni):
    cni.add(cni.pod())  # subnet.env says FLANNEL_IPMASQ=true
    assert "CNI-" not in _nat(cni)


def test_check_passes_after_add_and_fails_when_state_is_wrong(cni):
    pod = cni.pod()
    res = cni.add(pod)
    conf = cni.conf(prevResult=res)
    reply = cni.call("CHECK", conf, netns=pod).ok()
    assert reply.stdout == ""
    doc = cni.call("CHECK", cni.conf(), netns=pod).error()
    assert doc["msg"] == "Required prevResult missing"
    address = res["ips"][0]["address"]
    run(["ip", "-n", pod, "addr", "del", address, "dev", "eth0"])
    doc = cni.call("CHECK", conf, netns=pod).error()
    assert doc["msg"] == f"Failed to match addr {address} on interface eth0"
    cni.delete(pod)
    doc = cni.call("CHECK", conf, netns=pod).error()
    assert "Failed to find address added by container ctr1" in doc["msg"]


def test_check_notices_a_missing_route(cni):
    pod = cni.pod()
    res = cni.add(pod)
    run(["ip", "-n", pod, "route", "del", "10.244.0.0/16"])
    doc = cni.call("CHECK", cni.conf(prevResult=res), netns=pod).error()
    assert "10.244.0.0/16" in doc["msg"]


def test_check_is_refused_below_0_4_0(cni):
    doc = cni.call("CHECK", cni.conf(cniVersion="0.3.1", prevResult={}), netns=cni.pod()).error(1)
    assert "CHECK" in doc["msg"]


def test_del_removes_both_veth_ends_and_the_reservation_but_keeps_the_bridge(cni):
    pod = cni.pod()
    cni.add(pod)
    assert len(cni.reserved_ips()) == 1 and len(_veths(cni)) == 1
    cni.delete(pod)
    assert cni.links(pod) == ["lo"] and _veths(cni) == []
    assert cni.reserved_ips() == []
    assert "cni0" in cni.links(cni.host)
    assert cni.addrs(cni.host, "cni0") == [f"{SUBNET}.1/24"]


def test_del_is_idempotent_without_netns_with_deleted_netns_and_never_added(cni):
    pod = cni.pod()
    res = cni.add(pod)
    cni.delete(pod, conf=cni.conf(prevResult=res))
    cni.delete(pod)  # again, no prevResult
    cni.delete(None)  # no CNI_NETNS at all
    cni.delete(pod, cid="never-added")
    other = cni.pod()
    cni.add(other, cid="c2")
    run(["ip", "netns", "del", other])  # the runtime removed the netns first
    cni.pods.remove(other)
    cni.factory.created.remove(other)
    cni.delete(other, cid="c2")
    assert cni.reserved_ips() == []


def test_del_works_while_subnet_env_is_missing(cni):
    pod = cni.pod()
    cni.add(pod)
    os.unlink(cni.run_dir / "subnet.env")
    cni.delete(pod)
    assert cni.reserved_ips() == [] and cni.links(pod) == ["lo"]


def test_add_into_missing_netns_reserves_nothing(cni):
    doc = cni.call("ADD", cni.conf(), netns="/run/netns/flt-does-not-exist").error()
    assert "failed to open netns" in doc["msg"]
    assert cni.reserved_ips() == [] and "cni0" not in cni.links(cni.host)


def test_add_into_a_regular_file_netns_is_an_error(cni, tmp_path):
    fake = tmp_path / "notans"
    fake.write_text("x")
    doc = cni.call("ADD", cni.conf(), netns=str(fake)).error()
    assert "not a network namespace" in doc["msg"]


def test_add_into_the_runtimes_own_netns_is_code_8_and_touches_nothing(cni):
    before = cni.links(cni.host)
    cni.call("ADD", cni.conf(), netns=cni.host).error(8)
    cni.call("DEL", cni.conf(), netns=cni.host).error(8)
    assert cni.links(cni.host) == before and cni.reserved_ips() == []


def test_add_failing_after_ipam_rolls_back_ip_and_veth(cni):
    # an unreachable gateway makes the pod route fail after IPAM and veth creation
    conf = cni.standalone({"routes": [{"dst": "10.250.0.0/16", "gw": "10.77.0.1"}]}, ipMasq=True)
    pod = cni.pod()
    doc = cni.call("ADD", conf, netns=pod).error()
    assert "10.250.0.0/16" in doc["msg"]
    assert cni.reserved_ips() == []
    assert cni.links(pod) == ["lo"] and _veths(cni) == []
    assert "CNI-" not in _nat(cni)


def test_gc_releases_attachments_not_listed_and_their_nat_rules(cni):
    cni.write_subnet_env(ipmasq=False)
    pods = [cni.pod() for _ in range(3)]
    ips = [cni.add(p, cid=f"c{i}")["ips"][0]["address"].split("/")[0] for i, p in enumerate(pods)]
    valid = [{"containerID": "c0", "ifname": "eth0"}]
    conf = cni.conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": valid})
    reply = cni.call("GC", conf, cid=None, ifname=None).ok()
    assert reply.stdout == ""
    assert cni.reserved_ips() == [ips[0]]
    nat = _nat(cni)
    assert ips[0] in nat and ips[1] not in nat and ips[2] not in nat


def test_gc_and_status_need_1_1_0(cni):
    cni.add(cni.pod())
    nothing_valid = cni.conf(**{"cni.dev/valid-attachments": []})
    gc = cni.call("GC", nothing_valid, cid=None, ifname=None)
    status = cni.call("STATUS", cni.conf(), cid=None, ifname=None)
    if cni.version == "1.1.0":
        assert gc.ok().stdout == "" and status.ok().stdout == ""
        assert cni.reserved_ips() == []  # no attachment listed as valid: collected
    else:
        assert gc.error(1)["msg"] == "config version does not allow GC"
        assert status.error(1)["msg"] == "config version does not allow STATUS"
        assert len(cni.reserved_ips()) == 1  # a refused GC releases nothing


def test_status_is_ok_when_ready_and_50_without_subnet_env(cni):
    conf = cni.conf(cniVersion="1.1.0")
    assert cni.call("STATUS", conf, cid=None, ifname=None).ok().stdout == ""
    os.unlink(cni.run_dir / "subnet.env")
    doc = cni.call("STATUS", conf, cid=None, ifname=None).error(50)
    assert "subnet.env" in doc["msg"]


def test_store_layout_is_host_local_compatible(cni):
    pod = cni.pod()
    ip = cni.add(pod)["ips"][0]["address"].split("/")[0]
    files = cni.store_files()
    assert set(files) == {ip, "last_reserved_ip.0", "lock"}
    assert (cni.store / ip).read_bytes() == b"ctr1\r\neth0"
    assert (cni.store / "last_reserved_ip.0").read_text() == ip
    assert oct(os.stat(cni.store / ip).st_mode & 0o777) == "0o644"
    # the reference host-local plugin reads our store: it sees the address as taken
    conf = {
        "cniVersion": "1.0.0",
        "name": cni.name,
        "ipam": {"type": "host-local", "subnet": f"{SUBNET}.0/24", "dataDir": str(cni.data_dir)},
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ref",
        "CNI_NETNS": f"/run/netns/{pod}",
        "CNI_IFNAME": "eth1",
        "CNI_PATH": "/usr/lib/cni",
    }
    proc = subprocess.run(
        ["/usr/lib/cni/host-local"],
        input=json.dumps(conf).encode(),
        env=env,
        capture_output=True,
        check=True,
    )
    ref_ip = json.loads(proc.stdout)["ips"][0]["address"].split("/")[0]
    assert ref_ip != ip and (cni.store / ref_ip).read_bytes() == b"ref\r\neth1"


def test_del_removes_nat_rules_even_if_the_store_lost_the_address(cni):
    cni.write_subnet_env(ipmasq=False)
    pod = cni.pod()
    ip = cni.add(pod)["ips"][0]["address"].split("/")[0]
    os.unlink(cni.store / ip)  # e.g. an operator wiped the IPAM directory
    cni.delete(pod)
    assert "CNI-" not in _nat(cni) and ip not in _nat(cni)


def test_del_without_subnet_env_does_not_create_nft_state(cni):
    pod = cni.pod()
    cni.add(pod)  # FLANNEL_IPMASQ=true: the plugin adds no NAT rules
    os.unlink(cni.run_dir / "subnet.env")  # masquerading now unknown: DEL checks, adds nothing
    cni.delete(pod)
    assert "flannelish_cni" not in _nat(cni)


def test_standalone_server_helper_serves_requests_and_removes_its_socket(cni_inproc):
    """`python -m flannelish.cni.server` (the daemon's CniServer without the daemon)."""
    import sys

    from flannelish.testing.proc import stop_pid

    cni = cni_inproc
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            cni.host,
            sys.executable,
            "-m",
            "flannelish.cni.server",
            "--socket",
            cni.socket,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("ready")
        pod = cni.pod()
        cni.add(pod)
        cni.delete(pod)
    finally:
        stop_pid(proc.pid, proc=proc)
    log = proc.stderr.read()
    assert "CNI ADD ctr1: exit 0" in log and "CNI DEL ctr1: exit 0" in log
    assert not os.path.exists(cni.socket)


def test_a_stalled_client_does_not_block_the_daemon(cni_daemon, monkeypatch):
    import socket
    import time

    from flannelish.cni import server as server_module

    cni = cni_daemon
    monkeypatch.setattr(server_module, "READ_TIMEOUT_S", 0.5)
    stalled = []
    for _ in range(server_module.MAX_CONCURRENT + 2):  # more than the work slots
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(cni.socket)
        sock.sendall(b"FLCNI2\n")  # then nothing more
        stalled.append(sock)
    try:
        started = time.monotonic()
        cni.add(cni.pod())  # served while the stalled connections wait
        assert time.monotonic() - started < 5
    finally:
        for sock in stalled:
            sock.close()
