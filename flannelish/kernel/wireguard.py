"""WireGuard devices: the UAPI and ``wg`` control paths and the peer Resource.

Keys live in :mod:`flannelish.kernel.wireguard_keys`, the wireguard-go
supervisor in :mod:`flannelish.kernel.wireguard_go`.

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
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, ClassVar, Protocol

from flannelish.errors import KernelError
from flannelish.kernel.wireguard_keys import b64_to_hex, hex_to_b64, run_wg

log = logging.getLogger("flannelish.wireguard")

ZERO_KEY = "0" * 64

Net = IPv4Network | IPv6Network


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
        return run_wg(*args, prefix=self.prefix)

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
