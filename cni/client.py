"""The fast path: forward one request to the daemon's CniServer over a unix socket.

Imports only ``os``, ``json`` and ``socket``: this runs in every plugin
process, where Python start-up already dominates the cost.

Wire format (private to flannelish.cni, version in the magic line)::

    request : b"FLCNI1\\n" + JSON {"env": {...}} + b"\\n" + raw stdin bytes, then EOF
    response: JSON {"exit": int, "stdout": str, "stderr": str}, then EOF

The server learns the caller's network namespace from SO_PEERCRED, so the
plugin must stay connected (blocked on the reply) while the work is done.
``forward`` returns None when no daemon answers (no socket, nobody listening,
or the server declines): the caller then does the work in-process.  Once the
request is sent, a broken connection is *not* retried in-process, because
the daemon may have done part of the work; the runtime gets code 11.
"""

from __future__ import annotations

import json
import os
import socket

MAGIC = b"FLCNI1\n"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
SOCKET_NAME = "flannelish.sock"
REPLY_TIMEOUT_S = 300.0


def socket_path(doc: object) -> str:
    """`daemonSocket`, else `<dir of subnetFile>/flannelish.sock` (no validation here)."""
    if not isinstance(doc, dict):
        doc = {}
    explicit = doc.get("daemonSocket")
    if isinstance(explicit, str) and explicit:
        return explicit
    subnet_file = doc.get("subnetFile")
    if not isinstance(subnet_file, str) or not subnet_file:
        subnet_file = DEFAULT_SUBNET_FILE
    return os.path.join(os.path.dirname(subnet_file) or ".", SOCKET_NAME)


def forward(path: str, env: dict[str, str], stdin: bytes) -> tuple[int, str, str] | None:
    """(exit code, stdout, stderr) from the daemon, or None if no daemon serves `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None  # absent, stale socket or not ours: do the work in-process
        sock.settimeout(REPLY_TIMEOUT_S)
        try:
            sock.sendall(MAGIC + json.dumps({"env": env}).encode() + b"\n" + stdin)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            reply = json.loads(b"".join(chunks))
        except (OSError, ValueError) as exc:
            return 1, _try_later(f"lost the connection to the daemon at {path}: {exc}"), ""
        if not isinstance(reply, dict) or reply.get("decline"):
            return None
        return int(reply["exit"]), str(reply["stdout"]), str(reply.get("stderr", ""))
    finally:
        sock.close()


def _try_later(msg: str) -> str:
    return json.dumps({"cniVersion": "1.1.0", "code": 11, "msg": msg}, indent=4)
