"""Fixtures for the CNI plugin tests: a test-made host namespace and the real executable.

Every plugin call runs ``ip netns exec <host> .venv/bin/flannelish-cni`` with
the CNI env vars and the netconf on stdin, exactly as a runtime does.  The
``cni`` fixture is parametrised over the two execution paths (in-process and
the daemon fast path through a CniServer) and the cniVersions 0.4.0, 1.0.0,
1.1.0.  In "daemon" mode the CniServer runs in this test process (root netns)
and must do the host side in the *caller's* namespace — which the tests check
by looking for the bridge inside the host namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run

PLUGIN = str(Path(sys.executable).parent / "flannelish-cni")
VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
MODES = ("inproc", "daemon")
SUBNET = "10.244.7"  # this node's /24 in subnet.env; every test has its own host netns


@dataclass
class Reply:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)

    def ok(self) -> Reply:
        assert self.rc == 0, f"plugin failed rc={self.rc}: {self.stdout} {self.stderr}"
        return self

    def error(self, code: int | None = None) -> dict:
        assert self.rc != 0, f"expected an error, got rc=0: {self.stdout}"
        assert "Traceback" not in self.stderr + self.stdout
        doc = json.loads(self.stdout)
        assert isinstance(doc["code"], int) and isinstance(doc["msg"], str) and doc["msg"]
        if code is not None:
            assert doc["code"] == code, doc
        return doc


@dataclass
class Cni:
    """A node: host netns, subnet.env, IPAM dir, and a way to call the plugin."""

    factory: NetnsFactory
    mode: str
    version: str
    tmp: Path
    host: str = ""
    name: str = "testnet"
    pods: list[str] = field(default_factory=list)
    forwarded: int = 0  # successful calls: in daemon mode they must have reached the server
    server: Any = None  # the CniServer in daemon mode

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def store(self) -> Path:
        return self.data_dir / self.name

    @property
    def socket(self) -> str:
        return str(self.run_dir / "flannelish.sock")

    def write_subnet_env(
        self, subnet: str = f"{SUBNET}.1/24", mtu: int = 1450, ipmasq: bool = True
    ) -> None:
        self.run_dir.mkdir(exist_ok=True)
        (self.run_dir / "subnet.env").write_text(
            f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\n"
            f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
        )

    def conf(self, **overrides: object) -> dict:
        """Node-mode netconf (subnet.env) with this test's dirs; overrides merge on top."""
        doc: dict = {
            "cniVersion": self.version,
            "name": self.name,
            "type": "flannelish-cni",
            "subnetFile": str(self.run_dir / "subnet.env"),
            "ipam": {"dataDir": str(self.data_dir)},
        }
        doc.update(overrides)
        return doc

    def standalone(self, ipam: dict | None = None, **overrides: object) -> dict:
        """Stand-alone netconf with an explicit host-local ipam section."""
        section = {"type": "host-local", "subnet": "10.244.9.0/24", "dataDir": str(self.data_dir)}
        section.update(ipam or {})
        doc = self.conf(ipam=section, bridge="br9", **overrides)
        return doc

    def pod(self, short: str | None = None) -> str:
        name = self.factory.create(short or f"p{len(self.pods)}")
        self.pods.append(name)
        return name

    def call(
        self,
        command: str,
        conf: dict | bytes | str | None = None,
        cid: str | None = "ctr1",
        netns: str | None = None,
        ifname: str | None = "eth0",
        env: dict[str, str] | None = None,
        path: str | None = "/usr/lib/cni",
        timeout: float = 60,
        binary: str = PLUGIN,
    ) -> Reply:
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
        }
        if cid is not None:
            full_env["CNI_CONTAINERID"] = cid
        if netns is not None:
            full_env["CNI_NETNS"] = netns if netns.startswith("/") else f"/run/netns/{netns}"
        if ifname is not None:
            full_env["CNI_IFNAME"] = ifname
        if path is not None:
            full_env["CNI_PATH"] = path
        full_env.update(env or {})
        if conf is None:
            data = b""
        elif isinstance(conf, dict):
            data = json.dumps(conf).encode()
        else:
            data = conf.encode() if isinstance(conf, str) else conf
        proc = subprocess.run(
            ["ip", "netns", "exec", self.host, binary],
            input=data,
            env=full_env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode == 0 and command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
            self.forwarded += 1
        return Reply(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def add(self, netns: str, cid: str = "ctr1", conf: dict | None = None, **kw) -> dict:
        return self.call("ADD", conf or self.conf(), cid=cid, netns=netns, **kw).ok().json

    def delete(self, netns: str | None, cid: str = "ctr1", conf: dict | None = None, **kw):
        reply = self.call("DEL", conf or self.conf(), cid=cid, netns=netns, **kw).ok()
        assert reply.stdout == ""
        return reply

    # kernel views -------------------------------------------------------------
    def ip(self, netns: str, *args: str) -> str:
        return run(["ip", "-n", netns, *args]).stdout

    def link_json(self, netns: str, name: str) -> dict | None:
        out = run(["ip", "-j", "-d", "-n", netns, "link", "show", name], check=False)
        return json.loads(out.stdout)[0] if out.returncode == 0 else None

    def addrs(self, netns: str, name: str) -> list[str]:
        doc = json.loads(self.ip(netns, "-j", "addr", "show", name))
        return [
            f"{a['local']}/{a['prefixlen']}" for a in doc[0]["addr_info"] if a["family"] == "inet"
        ]

    def links(self, netns: str) -> list[str]:
        return [link["ifname"] for link in json.loads(self.ip(netns, "-j", "link"))]

    def store_files(self) -> list[str]:
        return sorted(os.listdir(self.store)) if self.store.exists() else []

    def reserved_ips(self) -> list[str]:
        return [f for f in self.store_files() if f[0].isdigit()]


@pytest.fixture(
    params=[(m, v) for m in MODES for v in VERSIONS],
    ids=[f"{m}-{v}" for m in MODES for v in VERSIONS],
)
def cni(request, netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Cni]:
    mode, version = request.param
    yield from _make(netns_factory, tmp_path, mode, version)


@pytest.fixture(params=MODES)
def cni_latest(request, netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Cni]:
    """Both paths, cniVersion 1.1.0 only (for the slow or version-independent checks)."""
    yield from _make(netns_factory, tmp_path, request.param, "1.1.0")


@pytest.fixture
def cni_inproc(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Cni]:
    """The in-process path only (for checks that start their own server)."""
    yield from _make(netns_factory, tmp_path, "inproc", "1.1.0")


@pytest.fixture
def cni_daemon(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Cni]:
    """The daemon fast path only (for checks of the server itself)."""
    yield from _make(netns_factory, tmp_path, "daemon", "1.1.0")


def _make(factory: NetnsFactory, tmp: Path, mode: str, version: str) -> Iterator[Cni]:
    cni = Cni(factory, mode, version, tmp)
    cni.host = factory.create("h")
    cni.write_subnet_env()
    if mode != "daemon":
        yield cni
        return
    from flannelish.cni.server import CniServer

    server = CniServer(cni.socket)
    server.start()
    cni.server = server
    try:
        yield cni
    finally:
        server.stop()
    if cni.forwarded:
        assert server.served > 0, "daemon mode, but no request reached the CniServer"
