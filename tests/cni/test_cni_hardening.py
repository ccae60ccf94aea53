"""Issue 12, CNI items: hostile or malformed input from the runtime and the socket path.

Each test drives the real executable (both execution paths where the fixture
says so) and checks the CNI code *and* that nothing was created or leaked:
no veth, no IP reservation, no nft element.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannelish.testing.proc import run

from .conftest import PLUGIN, SUBNET

FLANNELISH = str(Path(sys.executable).parent / "flannelish")


def _nat(cni) -> str:
    return run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout


def _veths(cni) -> list[str]:
    return [link for link in cni.links(cni.host) if link.startswith("veth")]


# --- item 7: identifiers are matched as whole strings ---------------------------------


def test_add_with_a_trailing_newline_in_the_container_id_is_code_4_and_creates_nothing(cni):
    pod = cni.pod()
    doc = cni.call("ADD", cni.conf(), cid="c3\n", netns=pod).error(4)
    assert doc["msg"] == "invalid characters in containerID" and doc["details"] == "c3\n"
    assert cni.store_files() == [] and cni.links(pod) == ["lo"] and _veths(cni) == []


def test_del_with_a_trailing_newline_is_refused_before_touching_anything(cni):
    """Before the fix this DEL removed the link but leaked the reservation."""
    cni.write_subnet_env(ipmasq=False)  # the plugin masquerades: an nft element exists too
    pod = cni.pod()
    ip = cni.add(pod, cid="c3")["ips"][0]["address"].split("/")[0]
    cni.call("DEL", cni.conf(), cid="c3\n", netns=pod).error(4)
    assert "eth0" in cni.links(pod) and len(_veths(cni)) == 1
    assert cni.reserved_ips() == [ip] and ip in _nat(cni)
    cni.delete(pod, cid="c3")
    assert cni.reserved_ips() == [] and _veths(cni) == [] and ip not in _nat(cni)


@pytest.mark.parametrize("name", ["net\n", "net\r\n"])
def test_network_name_with_a_trailing_newline_is_code_7(cni_latest, name):
    cni = cni_latest
    pod = cni.pod()
    cni.call("ADD", cni.conf(name=name), netns=pod).error(7)
    assert cni.links(pod) == ["lo"] and not cni.data_dir.exists()


# --- item 10: malformed prevResult and out-of-range integers are code 7, never 999 ----


@pytest.mark.parametrize(
    "mangle",
    [
        lambda prev: prev.update(ips="10.244.7.2/24"),
        lambda prev: prev["ips"][0].update(address="10.244.7.2/99"),
        lambda prev: prev["ips"][0].update(interface=7),
        lambda prev: prev["interfaces"][2].update(mac=["x"]),
        lambda prev: prev["routes"][0].update(table=2**40),
        lambda prev: prev["routes"].append({"dst": "10.9.0.0/16", "gw": 5}),
    ],
    ids=["ips-not-a-list", "bad-prefix", "bad-index", "mac-not-a-string", "table", "gw"],
)
def test_check_with_a_malformed_prev_result_is_code_7(cni, mangle):
    pod = cni.pod()
    prev = cni.add(pod)
    assert cni.call("CHECK", cni.conf(prevResult=prev), netns=pod).ok().stdout == ""
    mangle(prev)
    doc = cni.call("CHECK", cni.conf(prevResult=prev), netns=pod).error(7)
    assert "prevResult" in doc["msg"]
    cni.delete(pod, conf=cni.conf(prevResult=prev))  # DEL does not trip over it
    assert cni.reserved_ips() == [] and _veths(cni) == []


@pytest.mark.parametrize(
    ("route", "needle"),
    [
        ({"dst": "10.96.0.0/12", "table": 2**40}, "outside 0..4294967295"),
        ({"dst": "10.96.0.0/12", "scope": -1}, "outside 0..255"),
        ({"dst": "10.96.0.0/12", "priority": 2**32}, "priority"),
    ],
)
def test_add_with_an_out_of_range_route_field_is_code_7_and_creates_nothing(
    cni_latest, route, needle
):
    cni = cni_latest
    pod = cni.pod()
    doc = cni.call(
        "ADD", cni.conf(ipam={"dataDir": str(cni.data_dir), "routes": [route]}), netns=pod
    )
    assert needle in doc.error(7)["msg"]
    assert cni.store_files() == [] and cni.links(pod) == ["lo"] and _veths(cni) == []


def test_a_route_table_at_the_u32_limit_reaches_the_kernel(cni_latest):
    cni = cni_latest
    pod = cni.pod()
    route = {"dst": "10.96.0.0/12", "table": 2**32 - 1}
    cni.add(pod, conf=cni.conf(ipam={"dataDir": str(cni.data_dir), "routes": [route]}))
    assert "10.96.0.0/12" in run(["ip", "-n", pod, "route", "show", "table", str(2**32 - 1)]).stdout


# --- item 6: the plugin sends nothing to a socket served by another uid ----------------

NOBODY = 65534
FAKE_RESULT = b'{"cniVersion": "1.1.0", "ips": [{"address": "6.6.6.6/32"}], "dns": {}}'
FAKE_SERVER = r"""
import os, socket, sys
path, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]
fake = sys.argv[4].encode()
out = open(log, "ab", buffering=0)
def drop():
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if mode == "drop-then-bind":    # a socket file of its own in a world-writable directory
    drop()
srv.bind(path)
os.chmod(path, 0o666)
if mode == "bind-then-drop":    # the file is root's, but another uid listens on it
    drop()
srv.listen(16)
print("ready", os.geteuid(), flush=True)
while True:
    conn, _ = srv.accept()
    conn.settimeout(5)
    data = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    out.write(b"%d\n" % len(data))
    try:
        conn.sendall(b"0\n%d\n" % len(fake) + fake)
    except OSError:
        pass
    conn.close()
"""


class FakeServer:
    """A stranger listening on `directory`/flannelish.sock; logs how much it was sent."""

    def __init__(self, directory: Path, mode: str) -> None:
        self.socket = str(directory / "flannelish.sock")
        self.log = directory / "received.log"
        self.log.touch()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_SERVER, self.socket, str(self.log), mode, FAKE_RESULT],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().split()  # type: ignore[union-attr]
        assert line and line[0] == "ready", line
        self.uid = int(line[1])

    def received(self) -> list[int]:
        return [int(n) for n in self.log.read_text().split()]

    def stop(self) -> None:
        self.proc.kill()  # our own child, by PID
        self.proc.wait(timeout=10)


@pytest.fixture
def stranger_dir() -> Iterator[Path]:
    """A world-writable temp dir (uid 65534 must reach it), with a subnet.env for SUBNET."""
    directory = Path(tempfile.mkdtemp(prefix="flannelish-peercred-"))
    directory.chmod(0o777)
    (directory / "subnet.env").write_text(
        f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={SUBNET}.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _install_launcher(cni, tmp: Path, subnet_file: Path) -> str | None:
    """The native launcher with FL_SOCKET = <dir of subnet_file>/flannelish.sock (None: no cc)."""
    subprocess.run(
        [FLANNELISH, "install-cni", "--bin-dir", str(tmp / "bin"), "--conf-dir", str(tmp / "c"),
         "--subnet-file", str(subnet_file)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    native = tmp / "bin" / "flannelish-cni"
    return str(native) if (tmp / "bin" / "flannelish-cni.py").exists() else None


@pytest.mark.parametrize("mode", ["drop-then-bind", "bind-then-drop"])
@pytest.mark.parametrize("launcher", ["python", "native"])
def test_a_socket_served_by_another_uid_gets_nothing_and_pods_still_start(
    cni_inproc, stranger_dir, tmp_path, mode, launcher
):
    cni = cni_inproc
    binary = PLUGIN
    if launcher == "native":
        native = _install_launcher(cni, tmp_path, stranger_dir / "subnet.env")
        if native is None:
            pytest.skip("no C compiler: the native launcher is not built")
        binary = native
    server = FakeServer(stranger_dir, mode)
    try:
        assert server.uid == NOBODY
        conf = cni.conf(subnetFile=str(stranger_dir / "subnet.env"))
        pod = cni.pod()
        reply = cni.call("ADD", conf, netns=pod, binary=binary).ok()
        assert reply.json["ips"][0]["address"].startswith(f"{SUBNET}.")  # the real result
        assert "6.6.6.6" not in reply.stdout
        assert f"served by uid {NOBODY}" in reply.stderr and "working in-process" in reply.stderr
        cni.call("DEL", conf, netns=pod, binary=binary).ok()
        assert cni.reserved_ips() == [] and cni.links(pod) == ["lo"]
        assert server.received() and set(server.received()) == {0}  # it connected, got nothing
    finally:
        server.stop()


@pytest.mark.parametrize("launcher", ["python", "native"])
def test_control_a_root_listener_is_trusted_and_its_reply_is_used(
    cni_inproc, stranger_dir, tmp_path, launcher
):
    """The same fake server as root: proves the test above would see a leak."""
    cni = cni_inproc
    binary = PLUGIN
    if launcher == "native":
        native = _install_launcher(cni, tmp_path, stranger_dir / "subnet.env")
        if native is None:
            pytest.skip("no C compiler: the native launcher is not built")
        binary = native
    server = FakeServer(stranger_dir, "root")
    try:
        conf = cni.conf(subnetFile=str(stranger_dir / "subnet.env"))
        reply = cni.call("ADD", conf, netns=cni.pod(), binary=binary).ok()
        assert "6.6.6.6" in reply.stdout
        assert server.received() and server.received()[0] > len(json.dumps(conf))
    finally:
        server.stop()
    cni.forwarded = 0


@pytest.mark.unit
def test_an_oversized_netconf_is_code_6_without_reading_all_of_it(tmp_path):
    from flannelish.cni import client
    from flannelish.cni import main as cni_main

    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "e"}
    big = b'{"name": "' + b"x" * client.MAX_STDIN_BYTES + b'"}'
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the runtime: would write forever
        os.close(read)
        try:
            while True:
                os.write(write, big)
        finally:
            os._exit(0)
    os.close(write)
    saved = os.dup(0)
    try:
        os.dup2(read, 0)
        data = cni_main._read_stdin()
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read)
        os.kill(pid, signal.SIGKILL)  # our own child
        os.waitpid(pid, 0)
    assert client.MAX_STDIN_BYTES < len(data) <= client.MAX_STDIN_BYTES + 65536
    out = subprocess.run([PLUGIN], input=big, env=env, capture_output=True, timeout=60, check=False)
    assert out.returncode == 1 and json.loads(out.stdout)["code"] == 6


def test_the_native_launcher_does_not_forward_an_oversized_netconf(cni_daemon, tmp_path):
    cni = cni_daemon
    native = _install_launcher(cni, tmp_path, cni.run_dir / "subnet.env")
    if native is None:
        pytest.skip("no C compiler: the native launcher is not built")
    conf = cni.conf(padding="x" * (9 * 1024 * 1024))
    cni.call("ADD", conf, netns=cni.pod(), binary=native).error(6)
    assert cni.server.served == 0 and cni.store_files() == []
