"""Invoke the real `flannelish-cni` executable exactly as a container runtime does.

The runtime runs the plugin in the node's network namespace with the CNI_*
environment and the netconf on stdin, and reads a JSON result (or a JSON
error) from stdout.  Nothing here imports the plugin: the lab must exercise
the same path a kubelet or containerd would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flannelish.errors import FlannelishError, NotAvailableError
from flannelish.testing.proc import in_netns

PLUGIN = "flannelish-cni"
REFERENCE_PLUGINS = "/usr/lib/cni"


def plugin_dir() -> Path:
    """Where flannelish-cni is installed: next to the running interpreter (the venv's bin)."""
    here = Path(sys.executable).parent
    if (here / PLUGIN).exists():
        return here
    found = shutil.which(PLUGIN)
    if found is None:
        raise NotAvailableError(f"{PLUGIN} not found", "install the project (make setup)")
    return Path(found).parent


def netconf(name: str, subnet_file: str, data_dir: str) -> dict[str, Any]:
    """The node's netconf. Every node namespace shares the one filesystem, so IPAM
    state must go to a per-node directory (not /var/lib/cni/networks)."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "type": PLUGIN,
        "subnetFile": subnet_file,
        "dataDir": data_dir,
        "isDefaultGateway": True,
        "ipam": {"type": "host-local", "dataDir": f"{data_dir}/ipam"},
    }


@dataclass
class CniResult:
    ok: bool
    doc: dict[str, Any]
    stderr: str

    @property
    def ip(self) -> str:
        """The first address of the result without its prefix length."""
        ips = self.doc.get("ips") or []
        return str(ips[0]["address"]).split("/")[0] if ips else ""

    def ip_of(self, family: int) -> str:
        """The result's first address of IP version `family` (4 or 6), or ''."""
        for item in self.doc.get("ips") or []:
            address = str(item.get("address", "")).split("/")[0]
            if (":" in address) == (family == 6) and address:
                return address
        return ""

    @property
    def error(self) -> str:
        msg = str(self.doc.get("msg", "")) or self.stderr.strip() or "no output"
        details = self.doc.get("details")
        code = self.doc.get("code")
        return f"{msg}{f': {details}' if details else ''}{f' (CNI code {code})' if code else ''}"


def invoke(
    command: str,
    node_netns: str,
    conf_path: Path,
    container_id: str,
    pod_netns: str | None,
    ifname: str = "eth0",
    timeout: float = 30,
    cni_args: str = "",
    labels: dict[str, str] | None = None,
) -> CniResult:
    path = plugin_dir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_IFNAME": ifname,
        "CNI_PATH": f"{path}:{REFERENCE_PLUGINS}",
    }
    if pod_netns:
        env["CNI_NETNS"] = f"/run/netns/{pod_netns}"
    if cni_args:
        env["CNI_ARGS"] = cni_args
    conf = conf_path.read_bytes()
    if labels:  # the CNI conventions' args.cni.labels
        doc = json.loads(conf)
        doc["args"] = {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}
        conf = json.dumps(doc).encode()
    try:
        proc = subprocess.run(
            in_netns(node_netns, [str(path / PLUGIN)]),
            input=conf,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise FlannelishError(f"{PLUGIN} {command} timed out after {timeout}s") from exc
    out = proc.stdout.decode(errors="replace").strip()
    err = proc.stderr.decode(errors="replace")
    try:
        doc = json.loads(out) if out else {}
    except ValueError:
        doc = {"msg": f"unparsable output: {out[:200]}"}
    if not isinstance(doc, dict):
        doc = {"msg": f"unexpected output: {out[:200]}"}
    return CniResult(proc.returncode == 0, doc, err)
