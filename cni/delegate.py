"""Running a delegated IPAM plugin (any ``ipam.type`` other than host-local).

As the reference bridge plugin does, the delegate is found on CNI_PATH, gets
the *whole* netconf of this plugin on stdin and the same environment (only
CNI_COMMAND differs when we run DEL to undo a failed ADD).  Its stderr is
handed back to the caller so that it reaches the runtime's stderr, and an
error object it prints is re-raised with the delegate's own code and message.
"""

from __future__ import annotations

import json
import os

from flannelish.errors import CniCode

from .protocol import CniError, Invocation

DELEGATE_TIMEOUT_S = 60


def find_plugin(plugin_type: str, search_path: list[str]) -> str:
    for directory in search_path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        CniCode.INVALID_CONFIG,
        f'failed to find plugin "{plugin_type}" in path {search_path}',
    )


def run_delegate(
    plugin_type: str, command: str, inv: Invocation, netconf: dict, stderr_sink: list[str]
) -> dict | None:
    """Run the delegate; returns its parsed stdout (ADD) or None; raises its error."""
    import subprocess  # lazily: most configs never delegate

    binary = find_plugin(plugin_type, inv.path)
    env = dict(inv.env)
    env["CNI_COMMAND"] = command
    try:
        proc = subprocess.run(
            [binary],
            input=json.dumps(netconf).encode(),
            env=env,
            capture_output=True,
            timeout=DELEGATE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CniError(
            CniCode.TRY_AGAIN_LATER,
            f'IPAM plugin "{plugin_type}" {command} did not finish in {DELEGATE_TIMEOUT_S} s',
        ) from None
    if proc.stderr:
        stderr_sink.append(proc.stderr.decode(errors="replace"))
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        try:
            doc = json.loads(out)
            code = int(doc.get("code", CniCode.INTERNAL))
            msg = str(doc.get("msg", ""))
            details = doc.get("details") or None
        except (ValueError, AttributeError, TypeError):
            code, msg, details = int(CniCode.INTERNAL), out or "no output", None
        error = CniError(CniCode.INTERNAL, f'IPAM plugin "{plugin_type}" {command}: {msg}', details)
        if code in CniCode._value2member_map_:
            error.cni_code = CniCode(code)
        raise error
    if not out:
        return None
    try:
        doc = json.loads(out)
    except ValueError:
        raise CniError(
            CniCode.INTERNAL, f'IPAM plugin "{plugin_type}" printed no JSON result', out[:200]
        ) from None
    if not isinstance(doc, dict):
        raise CniError(CniCode.INTERNAL, f'IPAM plugin "{plugin_type}" result is not an object')
    return doc
