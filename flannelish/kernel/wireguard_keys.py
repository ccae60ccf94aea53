"""WireGuard keys: the node's key file, and conversions between the encodings.

Keys are generated with ``wg genkey`` and derived with ``wg pubkey``
(wireguard-tools is installed anyway for ``wg show``), so no X25519 code or
extra Python dependency is needed; they run once per start.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flannelish.errors import ConfigError, KernelError

log = logging.getLogger("flannelish.wireguard")


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


def run_wg(*args: str, stdin: str | None = None, prefix: Sequence[str] = ()) -> str:
    """Run ``wg`` (after ``prefix``, e.g. an nsenter); its stdout, or one readable error."""
    try:
        out = subprocess.run(
            [*prefix, "wg", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except FileNotFoundError:
        raise ConfigError(
            "the wg tool is missing", "install wireguard-tools (make setup does)"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise KernelError(f"wg {args[0]} failed", (exc.stderr or "").strip()[:200]) from None
    return out.stdout.strip()


def public_key(private_b64: str) -> str:
    return run_wg("pubkey", stdin=private_b64 + "\n")


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
        private = run_wg("genkey")
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
