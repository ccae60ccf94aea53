"""WireGuard devices: keys, the UAPI, the peer Resource and the wireguard-go supervisor.

Configuration path (measured on the 2-core lab machine): the UAPI
(``get=1`` / ``set=1`` on ``/run/wireguard/<dev>.sock``) spoken from Python
costs ~0.4 ms per ``get=1`` (~0.9 ms at load 13); ``wg show DEV dump`` costs
~21 ms (a fork/exec, plus nsenter to reach a private mount namespace).  So a
wireguard-go device is driven through its UAPI socket, cheap enough to poll
its peers every 200 ms (drift repair: the rtnetlink monitor never sees UAPI
changes).  A kernel WireGuard device has no UAPI socket; it is driven through
``wg`` (generic netlink) behind the same :class:`WgControl` interface
(:class:`WgToolControl` translates the same UAPI lines into one ``wg set``).
Both produce the same records; tests/kernel/test_wireguard_control.py drives
one wireguard-go device through either path and reads it back through the
other.

Keys: generated with ``wg genkey`` and derived with ``wg pubkey``
(wireguard-tools is installed anyway for ``wg show``), so no X25519 code or
extra Python dependency is needed; they run once per start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, ClassVar, Protocol

from flannelish.errors import ConfigError, KernelError

log = logging.getLogger("flannelish.wireguard")

WG_GO_ENV = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"
ZERO_KEY = "0" * 64

Net = IPv4Network | IPv6Network


class KeyFileError(ConfigError):
    """The WireGuard key file is unreadable, corrupt or gone (exit 3, never a silent re-key)."""


def b64_to_hex(key: str) -> str:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not base64: {key[:8]}…") from None
    if len(raw) != 32:
        raise ValueError(f"a WireGuard key is 32 bytes, got {len(raw)}")
    return raw.hex()


def clamp_hex(key: str) -> str:
    """A private key as a device reports it (X25519 clamping; `wg genkey` keys already are)."""
    raw = bytearray(bytes.fromhex(key))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return raw.hex()


def hex_to_b64(key: str) -> str:
    return base64.b64encode(bytes.fromhex(key)).decode()


def valid_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    try:
        b64_to_hex(key)
    except ValueError:
        return False
    return True


def _wg(*args: str, stdin: str | None = None) -> str:
    try:
        out = subprocess.run(
            ["wg", *args], input=stdin, capture_output=True, text=True, timeout=10, check=True
        )
    except FileNotFoundError:
        raise ConfigError(
            "the wg tool is missing", "install wireguard-tools (make setup does)"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise KernelError(f"wg {args[0]} failed", (exc.stderr or "").strip()[:200]) from None
    return out.stdout.strip()


def public_key(private_b64: str) -> str:
    return _wg("pubkey", stdin=private_b64 + "\n")


@dataclass(frozen=True)
class NodeKey:
    private: str  # base64; never logged, never in /status
    public: str
    path: Path

    def __repr__(self) -> str:  # the private key stays out of every repr and log
        return f"NodeKey(public={self.public!r}, path={str(self.path)!r})"


def load_or_create_key(path: Path, marker: Path) -> NodeKey:
    """The node's private key: read from ``path``, or generated once and kept 0600.

    ``marker`` (next to subnet.env) records the public key of the first
    generation; a key file that is missing while the marker exists (someone
    deleted it) or that does not decode is a KeyFileError, never a new
    identity: peers would keep the old public key and drop our traffic.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = None
    except OSError as exc:
        raise KeyFileError(f"cannot read WireGuard key file {path}", exc.strerror) from None
    if text is None:
        if marker.exists():
            recorded = marker.read_text().strip()
            raise KeyFileError(
                f"WireGuard key file {path} is missing but this node had public key {recorded}",
                f"restore the key file, or delete {marker} to start with a new identity "
                "(peers then need our new lease)",
            )
        private = _wg("genkey")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private + "\n")
        key = NodeKey(private, public_key(private), path)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(key.public + "\n")
        log.info("generated WireGuard key", extra={"path": str(path), "public_key": key.public})
        return key
    private = text.strip()
    if not valid_key(private):
        raise KeyFileError(
            f"WireGuard key file {path} is corrupt (not a base64 32-byte key)",
            "restore it from a backup; flannelish never replaces a key silently",
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("WireGuard key file %s has mode %o; setting 0600", path, mode)
        os.chmod(path, 0o600)
    key = NodeKey(private, public_key(private), path)
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(key.public + "\n")
    return key


# -- records ---------------------------------------------------------------------


@dataclass(frozen=True)
class WgPeer:
    """One peer on our WireGuard device (the reconciler's record).

    ``psk`` is a tag, never the key: "" none, "configured" equal to the
    configured PSK, "other" anything else (records are logged).
    """

    dev: str
    public_key: str  # base64
    endpoint: str  # "ip:port" or "[ipv6]:port"
    allowed_ips: tuple[Net, ...]  # sorted by sort_nets
    psk: str = ""
    keepalive: int = 0


@dataclass
class PeerStats:
    public_key: str
    endpoint: str
    allowed_ips: tuple[Net, ...]
    last_handshake: float  # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int
    psk_hex: str = field(default=ZERO_KEY, repr=False)
    keepalive: int = 0


@dataclass
class DeviceState:
    private_hex: str = field(default="", repr=False)
    listen_port: int = 0
    peers: list[PeerStats] = field(default_factory=list)


def parse_get(text: str) -> DeviceState:
    """Parse a UAPI ``get=1`` answer (errno already stripped)."""
    state = DeviceState()
    peer: PeerStats | None = None
    sec = nsec = 0
    allowed: list[Net] = []

    def close() -> None:
        if peer is not None:
            peer.allowed_ips = sort_nets(allowed)
            peer.last_handshake = sec + nsec / 1e9
            state.peers.append(peer)

    for line in text.splitlines():
        k, _, v = line.partition("=")
        if k == "public_key":
            close()
            peer = PeerStats(hex_to_b64(v), "", (), 0.0, 0, 0)
            sec = nsec = 0
            allowed = []
        elif peer is None:
            if k == "private_key":
                state.private_hex = v
            elif k == "listen_port":
                state.listen_port = int(v)
        elif k == "endpoint":
            peer.endpoint = v
        elif k == "allowed_ip":
            net = _net(v)
            if net is not None:
                allowed.append(net)
        elif k == "preshared_key":
            peer.psk_hex = v
        elif k == "persistent_keepalive_interval":
            peer.keepalive = int(v)
        elif k == "last_handshake_time_sec":
            sec = int(v)
        elif k == "last_handshake_time_nsec":
            nsec = int(v)
        elif k == "rx_bytes":
            peer.rx_bytes = int(v)
        elif k == "tx_bytes":
            peer.tx_bytes = int(v)
    close()
    return state


def _net(text: str) -> Net | None:
    try:
        return ip_network(text, strict=False)
    except ValueError:
        return None


def sort_nets(nets: Sequence[Net] | Any) -> tuple[Net, ...]:
    """Allowed IPs in one order whatever the source: IPv4 first, then IPv6."""
    return tuple(sorted(nets, key=lambda n: (n.version, n)))


# -- control paths ------------------------------------------------------------------


class WgControl(Protocol):
    def get(self) -> DeviceState: ...
    def set(self, lines: Sequence[str]) -> None: ...


class UapiControl:
    """The UAPI socket of a userspace device (wireguard-go)."""

    def __init__(self, socket_path: Any) -> None:
        self._path = socket_path  # a str or a callable returning the current path

    @property
    def path(self) -> str:
        return self._path() if callable(self._path) else str(self._path)

    def _connect(self, s: socket.socket) -> None:
        # A wireguard-go that has just (re)started may have bound its socket but
        # not be listening yet: refused for a moment, then fine.
        for _ in range(20):
            try:
                s.connect(self.path)
                return
            except ConnectionRefusedError:
                time.sleep(0.05)
        s.connect(self.path)

    def _call(self, request: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                self._connect(s)
                s.sendall(request.encode())
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise KernelError(f"WireGuard UAPI {self.path}: {exc.strerror or exc}") from None
        text = data.decode()
        body, _, tail = text.rstrip("\n").rpartition("errno=")
        if not tail.strip().isdigit():
            raise KernelError(f"WireGuard UAPI {self.path}: malformed answer")
        if int(tail) != 0:
            raise KernelError(f"WireGuard UAPI set failed: errno {tail.strip()}")
        return body

    def get(self) -> DeviceState:
        return parse_get(self._call("get=1\n\n"))

    def set(self, lines: Sequence[str]) -> None:
        self._call("set=1\n" + "".join(line + "\n" for line in lines) + "\n")


class WgToolControl:
    """A kernel WireGuard device, through ``wg`` (generic netlink); same records as the UAPI.

    ``set`` translates the UAPI lines into one ``wg set`` (keys go through
    0600 temporary files, never the command line).  ``prefix`` runs ``wg``
    elsewhere (``nsenter ...``): the tests drive a wireguard-go device with
    it, which checks the translation where no kernel WireGuard exists.
    """

    def __init__(self, dev: str, prefix: Sequence[str] = ()) -> None:
        self.dev = dev
        self.prefix = list(prefix)

    def _run(self, args: Sequence[str]) -> str:
        try:
            out = subprocess.run(
                [*self.prefix, "wg", *args], capture_output=True, text=True, timeout=10, check=True
            )
        except FileNotFoundError:
            raise ConfigError(
                "the wg tool is missing", "install wireguard-tools (make setup does)"
            ) from None
        except subprocess.CalledProcessError as exc:
            raise KernelError(f"wg {args[0]} failed", (exc.stderr or "").strip()[:200]) from None
        return out.stdout.strip()

    def get(self) -> DeviceState:
        lines = self._run(["show", self.dev, "dump"]).splitlines()
        state = DeviceState()
        if lines:
            first = lines[0].split("\t")
            state.private_hex = b64_to_hex(first[0]) if first[0] != "(none)" else ""
            state.listen_port = int(first[2]) if first[2].isdigit() else 0
        for line in lines[1:]:
            f = line.split("\t")
            nets = sort_nets([n for n in (_net(x) for x in f[3].split(",")) if n is not None])
            psk = b64_to_hex(f[1]) if f[1] != "(none)" else ZERO_KEY
            keep = int(f[7]) if f[7].isdigit() else 0
            endpoint = "" if f[2] == "(none)" else f[2]
            state.peers.append(
                PeerStats(f[0], endpoint, nets, float(f[4]), int(f[5]), int(f[6]), psk, keep)
            )
        return state

    def set(self, lines: Sequence[str]) -> None:
        import tempfile

        args: list[str] = ["set", self.dev]
        allowed: list[str] | None = None
        with tempfile.TemporaryDirectory(prefix="flannelish-wg-") as tmp:

            def keyfile(name: str, hex_key: str) -> str:
                path = os.path.join(tmp, name)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(hex_to_b64(hex_key) + "\n")
                return path

            def flush_allowed() -> None:
                nonlocal allowed
                if allowed is not None:
                    args.extend(["allowed-ips", ",".join(allowed)])
                    allowed = None

            for n, line in enumerate(lines):
                k, _, v = line.partition("=")
                if k == "private_key":
                    args += ["private-key", keyfile("private", v)]
                elif k == "listen_port":
                    args += ["listen-port", v]
                elif k == "public_key":
                    flush_allowed()
                    args += ["peer", hex_to_b64(v)]
                elif k == "remove" and v == "true":
                    args.append("remove")
                elif k == "endpoint":
                    args += ["endpoint", v]
                elif k == "replace_allowed_ips" and v == "true":
                    allowed = []
                elif k == "allowed_ip":
                    allowed = [*(allowed or []), v]
                elif k == "preshared_key":
                    path = "/dev/null" if v == ZERO_KEY else keyfile(f"psk{n}", v)
                    args += ["preshared-key", path]
                elif k == "persistent_keepalive_interval":
                    args += ["persistent-keepalive", v if v != "0" else "off"]
                else:
                    raise KernelError(f"wg set: no translation for {k}")
            flush_allowed()
            self._run(args)


# -- the peer Resource -----------------------------------------------------------------


class WgPeerResource:
    """Peers on our WireGuard devices (one, or two in Mode separate); every peer on them
    is ours.  A peer's slot is (device, public key): in Mode separate one node is a peer
    on both devices under the same key."""

    kind: ClassVar[str] = "wgpeer"
    record: ClassVar[type] = WgPeer

    def __init__(self, controls: Mapping[str, WgControl], psk_hex: str | None) -> None:
        self.controls = dict(controls)  # device name -> its control path
        self.psk_hex = psk_hex
        self.lock = threading.Lock()
        self.expected: dict[tuple[str, str], WgPeer] = {}  # what the devices should hold

    def key(self, obj: WgPeer) -> Hashable:
        return (obj.dev, obj.public_key)

    def to_record(self, dev: str, p: PeerStats) -> WgPeer:
        if p.psk_hex == ZERO_KEY:
            tag = ""
        elif self.psk_hex is not None and p.psk_hex == self.psk_hex:
            tag = "configured"
        else:
            tag = "other"
        return WgPeer(dev, p.public_key, p.endpoint, p.allowed_ips, tag, p.keepalive)

    def _actual(self) -> dict[tuple[str, str], WgPeer]:
        return {
            (dev, p.public_key): self.to_record(dev, p)
            for dev, control in self.controls.items()
            for p in control.get().peers
        }

    def dump(self, tick: Callable[[], object] | None = None) -> Sequence[WgPeer]:
        actual = self._actual()
        with self.lock:
            self.expected = dict(actual)
        return list(actual.values())

    def ensure(self, obj: WgPeer) -> None:
        psk = self.psk_hex if obj.psk == "configured" and self.psk_hex else ZERO_KEY
        lines = [
            f"public_key={b64_to_hex(obj.public_key)}",
            f"endpoint={obj.endpoint}",
            "replace_allowed_ips=true",
            *(f"allowed_ip={n}" for n in obj.allowed_ips),
            f"preshared_key={psk}",
            f"persistent_keepalive_interval={obj.keepalive}",
        ]
        self.controls[obj.dev].set(lines)
        with self.lock:
            self.expected[(obj.dev, obj.public_key)] = obj

    create = ensure  # every peer on our own devices is ours

    def remove(self, obj: WgPeer) -> None:
        slot = (obj.dev, obj.public_key)
        with self.lock:
            current = self.expected.get(slot)
        if current is not None and current != obj:
            # The key was written since for another lease (a peer that moved to
            # another subnet, both events in one batch): that peer stays.
            return
        control = self.controls.get(obj.dev)
        if control is None:
            return  # a device we no longer run
        control.set([f"public_key={b64_to_hex(obj.public_key)}", "remove=true"])
        with self.lock:
            self.expected.pop(slot, None)

    def drifted(self) -> bool:
        """Do the devices differ from what we last dumped or wrote? (cheap: one get=1 each)"""
        actual = self._actual()
        with self.lock:
            expected = dict(self.expected)
        if actual.keys() != expected.keys():
            return True
        # Endpoints roam (a peer behind NAT); anything else we set must stay.
        return any(
            (a.allowed_ips, a.psk, a.keepalive)
            != (expected[k].allowed_ips, expected[k].psk, expected[k].keepalive)
            for k, a in actual.items()
        )


# -- wireguard-go ---------------------------------------------------------------------------


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
