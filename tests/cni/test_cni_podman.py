"""A real runtime: podman (CNI backend) attaches containers with flannelish-cni + portmap.

Set up as docs/dependencies.md §6 describes, with everything private: CONTAINERS_CONF
points at a temp containers.conf whose network_config_dir holds only our
conflist (written by `flannelish install-cni`) and whose plugin dirs are the
installed launcher + Debian's plugins; images, containers and state live in
a temp --root/--runroot/--tmpdir with the vfs driver.  podman runs inside a
test-made host namespace via ``nsenter --net`` (``ip netns exec`` would
remount /sys and hide the cgroup mounts runc needs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flannelish.testing.proc import run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not shutil.which("podman") or not shutil.which("runc"),
        reason="podman/runc not installed (make setup installs them)",
    ),
]

NET = "flannelishpm"
FLANNELISH = str(Path(sys.executable).parent / "flannelish")
APPLETS = ("sh", "ping", "wget", "httpd", "sleep", "mkdir", "echo", "cat")


class Podman:
    def __init__(self, tmp: Path, state: Path, host: str) -> None:
        self.tmp, self.state, self.host = tmp, state, host
        self.store = tmp / "data" / NET
        self.env = dict(os.environ, CONTAINERS_CONF=str(tmp / "containers.conf"))

    def __call__(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        stdin: bytes | None = None,
        host_netns: bool = True,
    ) -> subprocess.CompletedProcess:
        enter = ["nsenter", f"--net=/run/netns/{self.host}"] if host_netns else []
        storage = [
            "--root",
            str(self.state / "root"),
            "--runroot",
            str(self.state / "run"),
            "--tmpdir",
            str(self.state / "tmp"),
            "--storage-driver",
            "vfs",
        ]
        argv = [*enter, "podman", *storage, *args]
        proc = subprocess.run(
            argv, env=self.env, capture_output=True, input=stdin, timeout=timeout, check=False
        )
        out, err = proc.stdout.decode(), proc.stderr.decode()
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {err}")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.fixture(params=["inproc", "daemon"])
def podman(request, netns_factory, tmp_path):
    host = netns_factory.create("pm")
    run_dir, data = tmp_path / "run", tmp_path / "data"
    run_dir.mkdir()
    (run_dir / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    run(
        [
            FLANNELISH,
            "install-cni",
            "--bin-dir",
            str(bin_dir),
            "--conf-dir",
            str(conf_dir),
            "--network-name",
            NET,
            "--subnet-file",
            str(run_dir / "subnet.env"),
        ]
    )
    conflist = conf_dir / "10-flannelish.conflist"
    doc = json.loads(conflist.read_text())
    assert [p["type"] for p in doc["plugins"]] == ["flannelish-cni", "portmap"]
    doc["plugins"][0]["ipam"] = {"dataDir": str(data)}  # keep the store in the temp dir
    conflist.write_text(json.dumps(doc))
    hard = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout
    (tmp_path / "containers.conf").write_text(
        f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{conf_dir}"\n'
        f'cni_plugin_dirs = ["{bin_dir}", "/usr/lib/cni"]\n'
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'events_logfile_path = "{tmp_path / "events.log"}"\n'
        f'[containers]\ndefault_ulimits = ["nofile={hard.strip()}:{hard.strip()}", '
        '"nproc=32768:32768"]\n'
    )
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", rootfs / "bin" / applet)
    # podman refuses a runroot longer than 50 characters: a short dir of our own
    state = Path(tempfile.mkdtemp(prefix="flpm-", dir="/tmp"))
    pm = Podman(tmp_path, state, host)
    try:
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True)
        pm(
            "import",
            "--change",
            'CMD ["/bin/sh"]',
            "-",
            "localhost/busybox",
            stdin=tar.stdout,
            host_netns=False,
        )
        if request.param == "daemon":
            from flannelish.cni.server import CniServer

            server = CniServer(str(run_dir / "flannelish.sock"))
            server.start()
            try:
                yield pm
            finally:
                server.stop()
            # ADD x2 + DEL x2 went through the daemon (the native launcher, if built)
            assert server.served >= 4
        else:
            yield pm
    finally:
        pm("rm", "-af", "-t", "0", check=False)
        pm("rmi", "-af", check=False)
        shutil.rmtree(state, ignore_errors=True)


def _ip(pm: Podman, name: str) -> str:
    return pm(
        "inspect", "-f", f"{{{{.NetworkSettings.Networks.{NET}.IPAddress}}}}", name
    ).stdout.strip()


def test_podman_containers_get_node_ips_ping_each_other_publish_a_port_and_release(podman):
    pm = podman
    pm(
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        NET,
        "--cap-add",
        "NET_RAW",
        "-p",
        "18080:8080",
        "localhost/busybox",
        "sh",
        "-c",
        "mkdir /w && echo hello-flannelish > /w/index.html && httpd -f -p 8080 -h /w",
    )
    pm(
        "run",
        "-d",
        "--name",
        "client",
        "--network",
        NET,
        "--cap-add",
        "NET_RAW",
        "localhost/busybox",
        "sleep",
        "1000",
    )
    web, client = _ip(pm, "web"), _ip(pm, "client")
    assert web.startswith("10.244.7.") and client.startswith("10.244.7.") and web != client
    assert sorted(f for f in os.listdir(pm.store) if f[0].isdigit()) == sorted([web, client])

    assert pm("exec", "client", "ping", "-c", "2", "-W", "2", web, check=False).returncode == 0
    assert pm("exec", "web", "ping", "-c", "2", "-W", "2", client, check=False).returncode == 0
    assert "hello-flannelish" in pm("exec", "client", "wget", "-qO-", f"http://{web}:8080/").stdout

    # the published port (portmap, chained after flannelish-cni) answers on the node
    body = b""
    for _ in range(20):
        proc = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pm.host,
                sys.executable,
                "-c",
                "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                "'http://10.244.7.1:18080/', timeout=3).read().decode())",
            ],
            capture_output=True,
            check=False,
        )
        body = proc.stdout
        if b"hello-flannelish" in body:
            break
        time.sleep(0.2)
    assert b"hello-flannelish" in body

    pm("rm", "-f", "-t", "0", "web", "client")
    assert [f for f in os.listdir(pm.store) if f[0].isdigit()] == []
    links = run(["ip", "-n", pm.host, "-o", "link"]).stdout
    assert "veth" not in links
    assert "cni0" in links
