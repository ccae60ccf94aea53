"""Entry point of the `flannelish-cni` executable (CNI protocol).

Kept to the standard library on the fast path: the runtime starts a fresh
process for every call, and Python start-up is already most of its cost.

1. CNI_COMMAND missing/unknown or VERSION: answered here.
2. Otherwise stdin is read and the request is forwarded to the daemon's
   CniServer (``daemonSocket``, else ``<dir of subnetFile>/flannelish.sock``).
3. No daemon answers: ``handler.handle`` runs in this process (the same code
   the server runs; pyroute2 is imported only then).

Whatever happens, the runtime gets a CNI error object on stdout and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys

# Kept literal (not imported) so VERSION costs no extra imports.
_SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def _emit(code: int, out: str, err: str) -> int:
    if err:
        sys.stderr.write(err)
        sys.stderr.flush()
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    return code


def run(environ: dict[str, str], stdin: bytes | None = None) -> int:
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        return _emit(
            0, json.dumps({"cniVersion": "1.1.0", "supportedVersions": list(_SUPPORTED)}), ""
        )
    if command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        try:
            data = sys.stdin.buffer.read() if stdin is None else stdin
        except OSError as exc:
            return _emit(
                1,
                json.dumps(
                    {"cniVersion": "1.1.0", "code": 5, "msg": f"error reading from stdin: {exc}"},
                    indent=4,
                ),
                "",
            )
        from flannelish.cni.client import forward, socket_path

        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            doc = None  # the handler reports it with code 6
        if doc is not None:
            reply = forward(socket_path(doc), environ, data)
            if reply is not None:
                return _emit(*reply)
    else:
        data = b""
    from flannelish.cni.handler import handle

    response = handle(environ, data)
    return _emit(response.exit_code, response.stdout, response.stderr)


def main() -> None:
    try:
        code = run(dict(os.environ))
    except BaseException as exc:  # the last line of defence: still a CNI error object
        if isinstance(exc, SystemExit):
            raise
        sys.stdout.write(
            json.dumps(
                {
                    "cniVersion": "1.1.0",
                    "code": 999,
                    "msg": f"internal error: {type(exc).__name__}: {exc}",
                }
            )
        )
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
