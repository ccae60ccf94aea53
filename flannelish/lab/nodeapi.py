"""Ask every lab daemon for its state, the way an operator on that node would.

Each lab daemon serves ``/status`` on ``127.0.0.1:<healthz port>`` *inside its
node namespace*.  A socket belongs to the network namespace of the thread that
creates it, so one short-lived thread per node enters the node's namespace
(setns on that thread only; the caller's namespace never changes) and makes
the request there.  No subprocess, so asking three daemons costs milliseconds.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from flannelish.lab.state import LabState, NodeState

NETNS_DIR = "/run/netns"


@dataclass
class DaemonView:
    """What one node's daemon says about itself (``/status``), or why it said nothing."""

    node: str
    status: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def reachable(self) -> bool:
        return not self.error and bool(self.status)

    @property
    def ready(self) -> bool:
        return self.reachable and bool(self.status.get("ready"))

    @property
    def skipped(self) -> dict[str, str]:
        """Peer subnet -> reason, for the peers this daemon refused to program."""
        peers = self.status.get("peers") or {}
        return {str(k): str(v) for k, v in (peers.get("skipped") or {}).items()}

    @property
    def failed_checks(self) -> list[str]:
        return [
            f"{c.get('name')}: {c.get('detail', '')}".rstrip(": ")
            for c in self.status.get("checks", [])
            if not c.get("ok")
        ]


def get_in_netns(netns: str, url: str, timeout: float = 2.0) -> bytes:
    """GET `url` from inside the named network namespace (no proxies)."""
    from flannelish.kernel.netns import setns

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)  # this thread only; it ends right after the request
            finally:
                os.close(fd)
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url, timeout=timeout) as resp:
                box["body"] = resp.read()
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"get-{netns}", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "error" in box:
        raise box["error"]
    if "body" not in box:
        raise TimeoutError(f"no answer from {url} in {netns} within {timeout:.0f}s")
    return bytes(box["body"])


def daemon_status(node: NodeState, timeout: float = 2.0) -> DaemonView:
    view = DaemonView(node.name)
    if not node.healthz_port:
        view.error = "the daemon runs without a health port (lab built by an older version)"
        return view
    url = f"http://127.0.0.1:{node.healthz_port}/status"
    try:
        doc = json.loads(get_in_netns(node.netns, url, timeout))
    except (OSError, ValueError) as exc:
        view.error = f"{url} in {node.netns}: {getattr(exc, 'reason', exc)}"
        return view
    if not isinstance(doc, dict):
        view.error = f"{url} returned no JSON object"
        return view
    view.status = doc
    return view


def all_status(state: LabState, timeout: float = 2.0) -> dict[str, DaemonView]:
    """Every node's view, asked in parallel."""
    views: dict[str, DaemonView] = {}

    def one(node: NodeState) -> None:
        views[node.name] = daemon_status(node, timeout)

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in state.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 2.0)
    return {n.name: views.get(n.name, DaemonView(n.name, error="no answer")) for n in state.nodes}
