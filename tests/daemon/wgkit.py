"""A daemon that runs the wireguard backend in a test: its own key file and its own
wireguard-go per device, each in a private mount namespace (several nodes on one
machine), reached by PID."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from flannelish.errors import KernelError
from flannelish.kernel.wireguard import UapiControl
from flannelish.kernel.wireguard_go import WireguardGo

from .helpers import DaemonProc

DEVICES = ("flannel-wg", "flannel-wg-v6")


class WgDaemon(DaemonProc):
    """A daemon with its own key file and wireguard-go in a private mount namespace."""

    @property
    def key_file(self) -> Path:
        return self.dir / "wgkey"

    def start(self, *extra: str) -> WgDaemon:
        old = dict(os.environ)
        os.environ["WIREGUARD_KEY_FILE"] = str(self.key_file)
        os.environ["FLANNELISH_WG_PRIVATE_RUN"] = "1"
        try:
            super().start(*extra)
        finally:
            os.environ.clear()
            os.environ.update(old)
        return self

    def wggo_pid(self, dev: str = "flannel-wg") -> int | None:
        try:
            return int((self.dir / f"{dev}.wireguard-go.pid").read_text())
        except (OSError, ValueError):
            return None

    def uapi(self, dev: str = "flannel-wg") -> UapiControl:
        return UapiControl(f"/proc/{self.wggo_pid(dev)}/root/run/wireguard/{dev}.sock")

    def wg(self, *args: str, dev: str = "flannel-wg") -> str:
        pid = self.wggo_pid(dev)
        out = subprocess.run(
            ["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--net=/proc/{pid}/ns/net", "wg", *args],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout

    def kill_wireguard_go(self) -> None:
        for dev in DEVICES:
            go = WireguardGo(dev, self.dir, True)
            if go.adopt(quiet=True):
                go.stop()


def peers_of(d: WgDaemon, dev: str = "flannel-wg") -> dict[str, tuple[str, tuple[str, ...]]]:
    try:
        state = d.uapi(dev).get()
    except KernelError:  # wireguard-go (re)starting: no socket yet
        return {}
    return {p.public_key: (p.endpoint, tuple(map(str, p.allowed_ips))) for p in state.peers}
