"""systemd's readiness protocol: tell the service manager when the node is usable.

With ``Type=notify`` systemd holds back units ordered after ours (containerd,
kubelet) until we send ``READY=1``, as flanneld's packaged unit does; we send
it once subnet.env is written and the CNI socket listens, so the first pod a
runtime starts finds both.  ``NOTIFY_SOCKET`` is a path, or an abstract
socket name starting with ``@``; without it (not under systemd) nothing is
sent.  Standard library only; a failure to notify is logged, never fatal.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("flannelish.sdnotify")


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; whether it was sent."""
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", path, exc.strerror or exc)
        return False
    return True
