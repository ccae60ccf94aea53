"""Fault drill: the plugin SIGKILLed in the middle of ADD or DEL.

The kill points are a test hook in cni/bridge.py: ``FLANNELISH_TEST_KILL_AT``
in the environment of the process doing the work makes it SIGKILL itself
right after the named step.  On the in-process path that is the plugin the
runtime started; on the fast path it is the daemon (a CniServer in its own
process here, so the kill takes nothing else down), and the plugin reports
code 11.

Each drill first checks that the kill left exactly the partial state of its
point (so a hook that fires too early or too late fails the test), then does
what a runtime does after a failed call -- DEL with the netns, or remove the
netns and GC -- and checks that nothing is left: no veth on the host, no
interface in the pod, no IP reservation, no nft element or chain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flannelish.cni.masq import chain_name

from flannelish.testing.netns import delete_netns
from flannelish.testing.proc import run

from .conftest import SUBNET, Cni

KILL_ENV = "FLANNELISH_TEST_KILL_AT"
CID = "ctr-drill"


class ServerProc:
    """`python -m flannelish.cni.server` in a process of its own (so it can be killed)."""

    def __init__(self, socket: str, log: Path, kill_at: str | None = None) -> None:
        env = dict(os.environ)
        env.pop(KILL_ENV, None)
        if kill_at:
            env[KILL_ENV] = kill_at
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flannelish.cni.server", "--socket", socket],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log.open("a"),
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("ready"), (line, log.read_text())

    def served(self, command: str) -> int:
        return self.log.read_text().count(f"CNI {command} {CID}: exit 0")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by PID
        return self.proc.wait(timeout=20)


@pytest.fixture(params=["inproc", "daemon"])
def node(request, cni_inproc: Cni, tmp_path: Path) -> Iterator[Drill]:
    drill = Drill(cni_inproc, request.param, tmp_path / "server.log")
    cni_inproc.write_subnet_env(ipmasq=False)  # the plugin masquerades: nft state too
    try:
        yield drill
    finally:
        if drill.server is not None:
            drill.server.stop()


class Drill:
    def __init__(self, cni: Cni, mode: str, log: Path) -> None:
        self.cni, self.mode, self.log = cni, mode, log
        self.server: ServerProc | None = None
        if mode == "daemon":
            self.server = ServerProc(cni.socket, log)

    def restart_server(self, kill_at: str | None = None) -> None:
        if self.mode != "daemon":
            return
        if self.server is not None:
            self.server.stop()
        self.server = ServerProc(self.cni.socket, self.log, kill_at)

    def call_killed(self, command: str, point: str, netns: str | None) -> None:
        """`command` with the kill hook armed; checks it died at the hook."""
        cni = self.cni
        if self.mode == "inproc":
            reply = cni.call(command, cni.conf(), cid=CID, netns=netns, env={KILL_ENV: point})
            assert reply.rc == -9, (reply.rc, reply.stdout, reply.stderr)  # ip netns exec execs
            assert reply.stdout == ""
            return
        self.restart_server(kill_at=point)
        reply = cni.call(command, cni.conf(), cid=CID, netns=netns)
        assert json.loads(reply.stdout)["code"] == 11, reply  # lost the daemon mid-request
        assert self.server is not None and self.server.proc.wait(timeout=20) == -9
        self.restart_server()  # the node's daemon comes back

    def nft_elements(self) -> list[str]:
        """The masquerade map's elements as "<ip> : jump <chain>" (none without the table)."""
        out = run(
            ["ip", "netns", "exec", self.cni.host, "nft", "-j", "list", "map", "ip",
             "flannelish_cni", "pods"],
            check=False,
        )  # fmt: skip
        if out.returncode != 0:
            return []
        elements = []
        for item in json.loads(out.stdout)["nftables"]:
            for key, verdict in item.get("map", {}).get("elem", []):
                elements.append(f"{key} : jump {verdict['jump']['target']}")
        return elements

    def left(self, pod: str | None) -> dict[str, object]:
        """Everything an attachment can leave behind."""
        cni = self.cni
        ruleset = run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout
        pod_links = cni.links(pod) if pod and Path(f"/run/netns/{pod}").exists() else ["lo"]
        pod_addrs = cni.addrs(pod, "eth0") if "eth0" in pod_links else []
        return {
            "veths": [link for link in cni.links(cni.host) if link.startswith("veth")],
            "pod_links": pod_links,
            "pod_addrs": pod_addrs,
            "reserved": cni.reserved_ips(),
            "nft_elements": self.nft_elements(),
            "nft_chain": chain_name(cni.name, CID) in ruleset,
        }


NOTHING = {
    "veths": [],
    "pod_links": ["lo"],
    "pod_addrs": [],
    "reserved": [],
    "nft_elements": [],
    "nft_chain": False,
}


def _expected_after(point: str, ip: str) -> dict[str, object]:
    """The partial state each ADD kill point must leave."""
    state = dict(NOTHING, reserved=[ip])
    if point in ("add:veth", "add:addr", "add:masq"):
        state.update(veths="1 veth", pod_links=["lo", "eth0"])
    if point in ("add:addr", "add:masq"):
        state["pod_addrs"] = [f"{ip}/24"]
    if point == "add:masq":
        state.update(nft_elements=[f"{ip} : jump {chain_name('testnet', CID)}"], nft_chain=True)
    return state


def _normalise(state: dict[str, object]) -> dict[str, object]:
    veths = state["veths"]
    assert isinstance(veths, list)
    return dict(state, veths=f"{len(veths)} veth" if veths else [])


def _settled(drill: Drill, pod: str, timeout: float = 10.0) -> dict[str, object]:
    """What is left once the kernel has finished: a deleted pod namespace takes its
    veth peer with it asynchronously (the netns cleanup work queue), which under
    load can lag the GC call by a second or more; nothing else may lag."""
    deadline = time.monotonic() + timeout
    state = drill.left(pod)
    while state["veths"] and time.monotonic() < deadline:
        time.sleep(0.1)
        state = drill.left(pod)
    return state


def _cleanup(drill: Drill, how: str, pod: str) -> None:
    cni = drill.cni
    if how == "del":
        cni.delete(pod, cid=CID)  # the runtime's DEL after the failed ADD
    else:
        delete_netns(pod)  # the runtime gave up on the sandbox, then collects garbage
        gc = cni.conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
        assert cni.call("GC", gc, cid=None, ifname=None).ok().stdout == ""


ADD_POINTS = ["add:ipam", "add:veth", "add:addr", "add:masq"]


@pytest.mark.parametrize("how", ["del", "gc"])
@pytest.mark.parametrize("point", ADD_POINTS)
def test_add_killed_at_each_step_leaves_nothing_after_del_or_gc(node, point, how):
    cni = node.cni
    pod = cni.pod()
    node.call_killed("ADD", point, pod)
    state = node.left(pod)
    reserved = state["reserved"]
    assert isinstance(reserved, list) and len(reserved) == 1 and reserved[0].startswith(SUBNET)
    assert _normalise(state) == _expected_after(point, reserved[0])

    _cleanup(node, how, pod)
    assert _settled(node, pod) == NOTHING
    if node.server is not None and how == "del":
        assert node.server.served("DEL") == 1  # the cleanup went through the daemon
    # the address is free again: a new pod gets an attachment as usual
    other = cni.pod()
    assert cni.add(other, cid=CID)["ips"][0]["address"].startswith(f"{SUBNET}.")
    cni.delete(other, cid=CID)
    assert node.left(other) == NOTHING


@pytest.mark.parametrize("how", ["del", "gc"])
@pytest.mark.parametrize("point", ["del:masq", "del:ipam"])
def test_del_killed_half_way_is_finished_by_another_del_or_gc(node, point, how):
    cni = node.cni
    pod = cni.pod()
    ip = cni.add(pod, cid=CID)["ips"][0]["address"].split("/")[0]
    assert f"{ip} : jump" in "\n".join(node.left(pod)["nft_elements"])  # type: ignore[arg-type]
    node.call_killed("DEL", point, pod)
    left = node.left(pod)
    assert left["veths"] == [] and left["nft_elements"] == [] and not left["nft_chain"]
    assert left["reserved"] == ([ip] if point == "del:masq" else [])
    _cleanup(node, how, pod)
    assert _settled(node, pod) == NOTHING
