"""wireguard-go, Debian's userspace WireGuard, started and supervised per device.

Used where the kernel has no wireguard module (this project's test machine);
the device it makes is driven through :class:`~flannelish.kernel.wireguard.UapiControl`
like any other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from flannelish.errors import ConfigError, KernelError
from flannelish.kernel.wireguard import DeviceState, UapiControl

WG_GO_ENV = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"

log = logging.getLogger("flannelish.wireguard")


def kernel_wireguard_available(dev: str) -> bool:
    """Can this kernel create a wireguard link?  (Probed with a throw-away device.)"""
    probe = f"{dev[:9]}-probe"
    r = subprocess.run(
        ["ip", "link", "add", probe, "type", "wireguard"], capture_output=True, timeout=10
    )
    if r.returncode != 0:
        return False
    subprocess.run(["ip", "link", "del", probe], capture_output=True, timeout=10)
    return True


class WireguardGo:
    """Runs and supervises Debian's wireguard-go for one device.

    wireguard-go outlives a daemon restart (like a kernel device, so pods keep
    talking): it runs in its own session and the PID goes to
    ``<state_dir>/<dev>.wireguard-go.pid``; a restarted daemon adopts it when
    that PID is still wireguard-go for our device and its socket answers.

    With ``private_run`` (several nodes on one machine: tests, the lab) it runs
    in a private mount namespace with its own tmpfs on /run/wireguard, and we
    reach its socket through ``/proc/<pid>/root``; ``nsenter
    --mount=/proc/<pid>/ns/mnt wg show`` shows the node's device.
    """

    def __init__(self, dev: str, state_dir: Path, private_run: bool) -> None:
        self.dev = dev
        self.private_run = private_run
        self.pidfile = state_dir / f"{dev}.wireguard-go.pid"
        self.pid: int | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def socket_path(self) -> str:
        if self.private_run and self.pid is not None:
            return f"/proc/{self.pid}/root/run/wireguard/{self.dev}.sock"
        return f"/run/wireguard/{self.dev}.sock"

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self._child is not None:
            return self._child.poll() is None
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(b"wireguard-go" in a for a in cmdline[:1]) and self.dev.encode() in cmdline

    def adopt(self, quiet: bool = False) -> bool:
        try:
            self.pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            self.pid = None
            return False
        if not self.alive() or not os.path.exists(self.socket_path()):
            self.pid = None
            return False
        if not quiet:
            log.info("adopted wireguard-go", extra={"dev": self.dev, "pid": self.pid})
        return True

    def start(self) -> None:
        env = {**os.environ, WG_GO_ENV: "1", "LOG_LEVEL": "error"}
        argv = ["wireguard-go", "-f", self.dev]
        if self.private_run:
            script = (
                "mkdir -p /run/wireguard && "
                "mount -t tmpfs -o mode=0700,size=1m flannelish-wg /run/wireguard && "
                f'exec wireguard-go -f "{self.dev}"'
            )
            argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
        try:
            self._child = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # survives our restart; SIGINT to us is not for it
            )
        except FileNotFoundError:
            raise ConfigError(
                "wireguard-go is not installed and the kernel has no WireGuard",
                "install wireguard-go (make setup does)",
            ) from None
        self.pid = self._child.pid
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(f"{self.pid}\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self._child.poll() is not None:
                raise KernelError(f"wireguard-go for {self.dev} exited ({self._child.returncode})")
            if os.path.exists(self.socket_path()):
                log.info(
                    "started wireguard-go (userspace WireGuard)",
                    extra={"dev": self.dev, "pid": self.pid, "private_run": self.private_run},
                )
                return
            time.sleep(0.02)
        self.stop()
        raise KernelError(f"wireguard-go for {self.dev} did not open its socket within 5 s")

    def ensure(self) -> bool:
        """Running afterwards; True if it had to be (re)started (the device is new)."""
        if self.alive():
            return False
        if self._child is not None:
            self._child.wait()  # reap it
            self._child = None
            log.warning("wireguard-go for %s died; restarting it", self.dev)
            self.restarts += 1
        elif self.adopt():
            return False
        self.start()
        return True

    def stop(self) -> None:
        """End our wireguard-go (the device goes with it); by PID only."""
        pid = self.pid
        if pid is None or not self.alive():
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and self.alive():
            if self._child is not None and self._child.poll() is not None:
                break
            time.sleep(0.02)
        if self.alive():
            os.kill(pid, signal.SIGKILL)
        if self._child is not None:
            self._child.wait(timeout=3)
        self.pid = None
        with contextlib.suppress(OSError):
            self.pidfile.unlink()


def node_wireguard_go(state_dir: Path, dev: str = "flannel-wg") -> WireguardGo | None:
    """The wireguard-go a node's daemon runs (pidfile in its state dir), if alive."""
    for private in (True, False):
        go = WireguardGo(dev, state_dir, private)
        if go.adopt(quiet=True):
            return go
    return None


def node_device_state(state_dir: Path, dev: str = "flannel-wg") -> DeviceState | None:
    """The device of a node's wireguard-go (its peers and handshakes), or None."""
    go = node_wireguard_go(state_dir, dev)
    if go is None:
        return None
    try:
        return UapiControl(go.socket_path()).get()
    except KernelError:
        return None


def stop_node_wireguard_go(state_dir: Path, dev: str = "flannel-wg") -> int | None:
    """Stop the wireguard-go of a node (by the PID in its pidfile); its PID, or None."""
    go = node_wireguard_go(state_dir, dev)
    if go is None:
        return None
    pid = go.pid
    go.stop()
    return pid
