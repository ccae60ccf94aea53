"""VXLAN DirectRouting through real daemons: plain routes on one L2, toggled live in etcd."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from .conftest import PREFIX
from .helpers import DaemonProc, add_pod, kernel_state, ping, wait_for

FAR_KEY = f"{PREFIX}/subnets/10.244.250.0-24"
FAR_MAC = "0e:00:00:00:fa:01"
FAR_IP = "198.19.0.9"  # not on the hosts' 198.18.0.0/24: VXLAN even with DirectRouting


def net_config(direct: bool) -> str:
    backend = {"Type": "vxlan", "DirectRouting": direct}
    return json.dumps({"Network": "10.244.0.0/16", "Backend": backend})


def far_peer() -> str:
    return json.dumps(
        {"PublicIP": FAR_IP, "PublicIPv6": None, "BackendType": "vxlan",
         "BackendData": {"VNI": 1, "VtepMAC": FAR_MAC}},
        separators=(",", ":"),
    )  # fmt: skip


FAR = ("10.244.250.0/24", "10.244.250.0", "flannel.1")


def want_state(d: DaemonProc, daemons: list[DaemonProc], direct: bool) -> dict:
    """What kernel_state() of d must be: the far peer always via VXLAN, the others per mode."""
    others = [x for x in daemons if x is not d]
    routes = [FAR]
    neigh, fdb = [("10.244.250.0", FAR_MAC)], [(FAR_MAC, FAR_IP)]
    for x in others:
        if direct:
            routes.append((str(x.subnet), str(x.host.ip), "eth0"))
        else:
            routes.append((str(x.subnet), str(x.subnet.network_address), "flannel.1"))
            mac = x.host.run("cat", "/sys/class/net/flannel.1/address").stdout.strip()
            neigh.append((str(x.subnet.network_address), mac))
            fdb.append((mac, str(x.host.ip)))
    return {"neigh": sorted(neigh), "fdb": sorted(fdb), "route": sorted(routes)}


def converged(daemons: list[DaemonProc], direct: bool) -> bool:
    return all(kernel_state(d.host) == want_state(d, daemons, direct) for d in daemons)


class Capture:
    """tcpdump on the underlay bridge while pods ping; packets parsed with scapy."""

    def __init__(self, underlay_netns: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", underlay_netns, "tcpdump", "-i", "br0", "-U", "-n", "-w",
             str(path), "icmp or udp port 8472"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        # tcpdump says "listening on br0" once attached (stderr line).
        self.proc.stderr.readline()
        time.sleep(0.2)

    def stop(self) -> tuple[int, int]:
        """(VXLAN packets carrying pod ICMP, plain pod ICMP packets) seen on the underlay."""
        time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # our own tcpdump, by its PID
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        from scapy.layers.inet import ICMP, IP
        from scapy.layers.vxlan import VXLAN
        from scapy.utils import rdpcap

        vxlan = plain = 0
        for p in rdpcap(str(self.path)):
            if VXLAN in p and ICMP in p[VXLAN]:
                vxlan += p[VXLAN][IP].src.startswith("10.244.")
            elif ICMP in p and p[IP].src.startswith("10.244."):
                plain += 1
        return vxlan, plain


def ping_all(pods: list[str], daemons: list[DaemonProc]) -> None:
    for src, dst in ((0, 1), (1, 2), (2, 0)):
        target = daemons[dst].subnet.network_address + 2
        assert ping(pods[src], target), f"pod {src} -> {target}"


def test_direct_routing_on_one_segment_and_toggled_live(
    start_daemons, underlay, underlay_etcd, netns_factory, tmp_path
):
    underlay_etcd.etcdctl("put", f"{PREFIX}/config", net_config(True))
    underlay_etcd.etcdctl("put", FAR_KEY, far_peer())
    daemons = start_daemons(3, "--resync-interval", "1")
    pids = [d.proc.pid for d in daemons if d.proc is not None]
    # Same-L2 peers: `S via P dev eth0` (proto 70), no neigh/FDB; the far peer keeps VXLAN.
    wait_for(lambda: converged(daemons, True), 15, what="direct routes")
    pods = [add_pod(netns_factory, d.host, d.subnet, f"p{i}", 1450) for i, d in enumerate(daemons)]
    cap = Capture(underlay.netns, tmp_path / "direct.pcap")
    try:
        ping_all(pods, daemons)
    finally:
        vxlan, plain = cap.stop()
    assert vxlan == 0, "pod traffic was encapsulated although DirectRouting is on"
    assert plain >= 6, f"pod ICMP not seen unencapsulated on the underlay ({plain})"

    # A continuous ping runs through both flips: switching loses nothing (the route
    # is re-pointed before the neighbour/FDB entries go, and added after they exist).
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", pods[0], "ping", "-q", "-i", "0.05", "-W", "1",
         str(daemons[1].subnet.network_address + 2)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        # Operator turns DirectRouting off in etcd: VXLAN for every peer, no restart.
        underlay_etcd.etcdctl("put", f"{PREFIX}/config", net_config(False))
        wait_for(lambda: converged(daemons, False), 10, what="VXLAN routes after turning it off")
        cap = Capture(underlay.netns, tmp_path / "vxlan.pcap")
        try:
            ping_all(pods, daemons)
        finally:
            vxlan, plain = cap.stop()
        assert vxlan >= 6 and plain == 0, (vxlan, plain)

        # ... and on again: back to plain routes, neigh/FDB of the near peers removed.
        underlay_etcd.etcdctl("put", f"{PREFIX}/config", net_config(True))
        wait_for(lambda: converged(daemons, True), 10, what="direct routes after turning it on")
        time.sleep(0.5)
        pinger.send_signal(signal.SIGINT)  # our own ping, by its PID: prints its summary
        out, _ = pinger.communicate(timeout=10)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    assert " 0% packet loss" in out, out
    ping_all(pods, daemons)
    assert [d.proc.pid for d in daemons if d.proc is not None] == pids  # never restarted
    for d in daemons:
        log = d.log_path.read_text()
        assert "DirectRouting turned off" in log and "DirectRouting turned on" in log
        assert "rebuilding" not in log and "Traceback" not in log


def test_config_change_that_needs_a_restart_is_logged_and_the_daemon_keeps_running(
    start_daemons, underlay_etcd
):
    a, b = start_daemons(2, "--resync-interval", "1")
    wait_for(lambda: len(kernel_state(a.host)["route"]) == 1, 10, what="peer programmed")
    underlay_etcd.etcdctl(
        "put", f"{PREFIX}/config",
        '{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan","VNI":2,"DirectRouting":true}}',
    )  # fmt: skip
    message = "needs a restart of the daemon: Network, SubnetMin, SubnetMax, Backend.VNI"
    wait_for(lambda: message in a.log_path.read_text(), 10, what="restart-needed warning")
    # The live part applies; the rest keeps its running values.
    want = [(str(b.subnet), str(b.host.ip), "eth0")]
    wait_for(lambda: kernel_state(a.host)["route"] == want, 10, what="direct route")
    assert a.proc is not None and a.proc.poll() is None
    assert "flannel.2" not in a.host.run("ip", "link").stdout
    assert a.env()["FLANNEL_NETWORK"] == "10.244.0.0/16"
