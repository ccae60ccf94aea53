"""Entry point of the `flannelish-cni` executable (CNI protocol).

The fast path imports only C built-ins (see client.py): the runtime starts a
fresh process for every call, and interpreter start-up is already most of
its cost.

1. VERSION: answered here from a constant.
2. ADD/DEL/CHECK/GC/STATUS with a JSON netconf: forwarded to the daemon's
   CniServer (``daemonSocket``, else ``<dir of subnetFile>/flannelish.sock``).
3. Everything else, or no daemon answering: ``handler.handle`` runs in this
   process — the same code the server runs (the kernel side is imported only
   then).

Whatever happens, the runtime gets a CNI error object on stdout and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import posix
import sys

from .client import MAX_STDIN_BYTES, forward, peek_json, socket_path

# Literal, not computed: VERSION must cost no imports (mirrors protocol.SUPPORTED_VERSIONS).
VERSION_REPLY = (
    '{"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}'
)
FORWARDED = ("ADD", "DEL", "CHECK", "GC", "STATUS")


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    while data:
        data = data[posix.write(fd, data) :]


def _emit(code: int, out: str, err: str) -> int:
    if err:
        _write(2, err)
    if out:
        _write(1, out)
    return code


def _read_stdin() -> bytes:
    """All of stdin, but never more than MAX_STDIN_BYTES + 1 (enough to refuse it)."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_STDIN_BYTES:
        chunk = posix.read(0, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def run(environ: dict[str, str], stdin: bytes | None = None) -> int:
    """Serve one invocation; returns the exit status."""
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        return _emit(0, VERSION_REPLY, "")
    data = b""
    if command in FORWARDED:
        if stdin is None:
            try:
                stdin = _read_stdin()
            except OSError as exc:
                return _emit(1, _io_error(exc), "")
        if len(stdin) > MAX_STDIN_BYTES:
            return _emit(1, _too_large(), "")
        data = stdin
        doc = peek_json(data)
        if isinstance(doc, dict):
            reply = forward(socket_path(doc), environ, data)
            if reply is not None:
                return _emit(*reply)
    from .handler import handle

    response = handle(environ, data)
    return _emit(response.exit_code, response.stdout, response.stderr)


def _too_large() -> str:
    import json

    msg = f"error unmarshall network config: larger than {MAX_STDIN_BYTES} bytes"
    return json.dumps({"cniVersion": "1.1.0", "code": 6, "msg": msg}, indent=4)


def _io_error(exc: OSError) -> str:
    import json

    return json.dumps(
        {"cniVersion": "1.1.0", "code": 5, "msg": f"error reading from stdin: {exc}"}, indent=4
    )


def main() -> None:
    try:
        env = {
            k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()
        }
        code = run(env)
    except Exception as exc:  # the last line of defence: still a CNI error object
        import json

        msg = f"internal error: {type(exc).__name__}: {exc}"
        _write(1, json.dumps({"cniVersion": "1.1.0", "code": 999, "msg": msg}, indent=4))
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
