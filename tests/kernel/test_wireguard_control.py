"""wireguard-go under supervision, and the two control paths (UAPI, `wg`) on a real device.

The kernel here has no WireGuard, so the `wg` path (what a kernel device is
driven with) is checked against wireguard-go: `wg` speaks the UAPI to it, so the
translation of our UAPI lines into `wg set` arguments is exercised for real.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from flannelish.kernel.netns import in_netns
from flannelish.kernel.wireguard import UapiControl, WgPeer, WgPeerResource, WgToolControl
from flannelish.kernel.wireguard_go import WireguardGo, stop_node_wireguard_go
from flannelish.kernel.wireguard_keys import b64_to_hex, clamp_hex


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


@pytest.fixture
def wggo(netns_factory, tmp_path):
    ns = netns_factory.create("wgc")
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    go = WireguardGo("flannel-wg", tmp_path, private_run=True)
    try:
        with in_netns(fd):
            go.start()
        yield go
    finally:
        go.stop()
        os.close(fd)


def controls(go: WireguardGo):
    ns = f"/proc/{go.pid}/ns"
    tool = WgToolControl("flannel-wg", ["nsenter", f"--mount={ns}/mnt", f"--net={ns}/net"])
    return UapiControl(go.socket_path), tool


@pytest.mark.parametrize("path", ["uapi", "wg"])
def test_both_paths_program_the_same_peers(wggo, path):
    uapi, tool = controls(wggo)
    control = uapi if path == "uapi" else tool
    psk = b64_to_hex(key(9))
    control.set([f"private_key={b64_to_hex(key(1))}", "listen_port=51820"])
    res = WgPeerResource({"flannel-wg": control}, psk)
    a = WgPeer(
        "flannel-wg", key(2), "198.18.0.2:51820", (IPv4Network("10.244.2.0/24"),), "configured", 25
    )
    b = WgPeer("flannel-wg", key(3), "198.18.0.3:51820", (IPv4Network("10.244.3.0/24"),))
    # one device for both families (Mode auto/ipv6): an IPv6 endpoint, both subnets
    c = WgPeer(
        "flannel-wg", key(4), "[fd18::4]:51821",
        (IPv4Network("10.244.4.0/24"), IPv6Network("fd44:0:0:4::/64")),
    )  # fmt: skip
    res.create(a)
    res.create(b)
    res.create(c)
    res.remove(c)
    res.create(c)
    # Both paths read back the same records, whichever wrote them.
    assert sorted(res.dump(), key=lambda p: p.public_key) == [a, b, c]
    other = WgPeerResource({"flannel-wg": tool if control is uapi else uapi}, psk)
    assert sorted(other.dump(), key=lambda p: p.public_key) == [a, b, c]
    state = control.get()
    assert state.listen_port == 51820 and state.private_hex == clamp_hex(b64_to_hex(key(1)))
    moved = WgPeer("flannel-wg", key(2), "198.18.0.22:4000", (IPv4Network("10.244.20.0/24"),))
    res.ensure(moved)  # endpoint, subnet, PSK and keepalive replaced in place
    res.remove(b)
    res.remove(c)
    assert res.dump() == [moved]
    assert not res.drifted()


def test_supervisor_restarts_a_dead_wireguard_go_and_stops_by_pid(wggo, tmp_path, netns_factory):
    old = wggo.pid
    assert wggo.alive() and Path(wggo.socket_path()).exists()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while wggo.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    ns = netns_factory.name("wgc")
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        with in_netns(fd):
            assert wggo.ensure() is True  # restarted: the device is new
    finally:
        os.close(fd)
    assert wggo.pid != old and wggo.alive() and wggo.restarts == 1
    # Another process (a restarted daemon) adopts it from the pidfile, and can stop it.
    adopted = WireguardGo("flannel-wg", tmp_path, private_run=True)
    assert adopted.adopt() and adopted.pid == wggo.pid
    assert adopted.ensure() is False
    assert stop_node_wireguard_go(tmp_path) == wggo.pid
    assert not Path(f"/proc/{wggo.pid}/cmdline").exists() or not wggo.alive()
