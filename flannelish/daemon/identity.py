"""The node's persistent identity: one random ID, generated once, kept on disk.

Stored as ``node-id`` in the daemon's state directory (next to subnet.env and
the VTEP MAC file) and carried in our lease value (``NodeID``, see
flannelish.subnet.lease), so a host that restarts is recognised as itself
and a second host claiming the same PublicIP is refused.  A file that exists
but does not hold an ID is an error, never a silent new identity: a new ID
would let this host fight its own old lease.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from flannelish.errors import ConfigError
from flannelish.subnet.lease import NODE_ID

FILE_NAME = "node-id"


def load_or_create(state_dir: Path) -> str:
    path = state_dir / FILE_NAME
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return _create(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the node identity {path}", str(exc)) from None
    if not NODE_ID.fullmatch(text):
        raise ConfigError(
            f"{path} does not hold a node ID (32 lower-case hex digits)",
            "restore it, or delete it to give this node a new identity "
            "(its old lease then counts as another node's until it expires)",
        )
    return text


def _create(path: Path) -> str:
    node_id = secrets.token_hex(16)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write(node_id + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write the node identity {path}", exc.strerror) from None
    return node_id
