"""The fast path: forward one request to the daemon's CniServer over a unix socket.

This runs in every plugin process, where interpreter start-up is already
most of the cost, so it imports only C built-ins (``_socket``, ``_json``):
``json`` and ``socket`` would pull in ``re``, ``enum`` and ``collections``,
which cost more than the whole request takes in the daemon.

Wire format (private to flannelish.cni; the magic line carries the version)::

    request : b"FLCNI2\\n" + <len(env)> b"\\n" + env + stdin, then EOF
              env = b"\\0".join(b"KEY=VALUE" ...)   (the plugin's whole environment)
    reply   : <exit> b"\\n" + <len(stdout)> b"\\n" + stdout + stderr, then EOF
              or b"DECLINE\\n" + reason (the caller then works in-process)

The server learns the caller's network namespace from SO_PEERCRED, so the
plugin stays connected (blocked on the reply) while the work is done.
``forward`` returns None when no daemon answers (no socket, nobody listening,
or the server declines).  Once the request is sent, a broken connection is
*not* retried in-process, because the daemon may have done part of the work:
the runtime gets code 11 (try again later) instead.

Trust goes both ways: the request carries the plugin's whole environment and
the reply becomes the runtime's result, so before sending anything the
plugin checks the *listener's* credentials (SO_PEERCRED on the connected
socket: the uid that called listen(), race-free, unlike a stat() of the
path).  Only root or the plugin's own uid (which could ptrace the plugin
anyway) is trusted.  Anyone else listening on the path -- a socket left in a
writable directory, a daemon started by the wrong user -- gets nothing: the
plugin says so on stderr and does the work in-process, so pods keep starting
and the result is the same one the daemon would have given.
"""

from __future__ import annotations

import _json
import _socket
import posix
import sys

MAGIC = b"FLCNI2\n"
DECLINE = b"DECLINE\n"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
SOCKET_NAME = "flannelish.sock"
REPLY_TIMEOUT_S = 300.0
# Larger netconfs are refused (code 6) before anything else; a real one is a few KiB.
MAX_STDIN_BYTES = 8 * 1024 * 1024


class _JsonContext:
    """What _json's C scanner reads from json.JSONDecoder; strict like json.loads."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads accepts them


_scan = _json.make_scanner(_JsonContext())  # type: ignore[arg-type]
_WS = " \t\n\r"


def peek_json(data: bytes) -> object:
    """The JSON document in `data`, or None if it is not valid JSON (the handler says why)."""
    try:
        text = data.decode("utf-8")
        start = len(text) - len(text.lstrip(_WS))
        doc, end = _scan(text, start)
    except Exception:  # StopIteration, JSONDecodeError, UnicodeDecodeError, RecursionError
        return None
    return doc if not text[end:].strip(_WS) else None


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
    directory = subnet_file.rpartition("/")[0] if "/" in subnet_file else "."
    return (directory or "/") + "/" + SOCKET_NAME


def encode_request(env: dict[str, str], stdin: bytes) -> bytes:
    block = "\0".join(f"{k}={v}" for k, v in env.items()).encode("utf-8", "surrogateescape")
    return MAGIC + str(len(block)).encode() + b"\n" + block + stdin


def decode_request(data: bytes) -> tuple[dict[str, str], bytes] | None:
    if not data.startswith(MAGIC):
        return None
    size, sep, rest = data[len(MAGIC) :].partition(b"\n")
    if not sep or not size.isdigit() or int(size) > len(rest):
        return None
    block, stdin = rest[: int(size)], rest[int(size) :]
    env: dict[str, str] = {}
    for item in block.decode("utf-8", "surrogateescape").split("\0"):
        key, eq, value = item.partition("=")
        if eq:
            env[key] = value
    return env, stdin


def encode_reply(exit_code: int, stdout: str, stderr: str) -> bytes:
    out = stdout.encode("utf-8", "surrogateescape")
    return b"%d\n%d\n" % (exit_code, len(out)) + out + stderr.encode("utf-8", "surrogateescape")


def decode_reply(data: bytes) -> tuple[int, str, str]:
    code, _, rest = data.partition(b"\n")
    size, _, rest = rest.partition(b"\n")
    if not code.lstrip(b"-").isdigit() or not size.isdigit() or int(size) > len(rest):
        raise ValueError("malformed reply")
    out, err = rest[: int(size)], rest[int(size) :]
    return int(code), out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def listener_uid(sock: _socket.socket) -> int:
    """The uid of the process that listens on the other end (SO_PEERCRED)."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # pid, uid, gid
    return int.from_bytes(creds[4:8], sys.byteorder)


def trusted_uid(uid: int) -> bool:
    return uid == 0 or uid == posix.geteuid()


def forward(path: str, env: dict[str, str], stdin: bytes) -> tuple[int, str, str] | None:
    """(exit code, stdout, stderr) from the daemon, or None if no daemon serves `path`."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
            uid = listener_uid(sock)
        except OSError:
            return None  # absent, stale socket or not ours: do the work in-process
        if not trusted_uid(uid):
            _warn(
                f"flannelish-cni: not using {path}: it is served by uid {uid}, "
                f"not root or uid {posix.geteuid()}; working in-process\n"
            )
            return None
        sock.settimeout(REPLY_TIMEOUT_S)
        try:
            sock.sendall(encode_request(env, stdin))
            sock.shutdown(_socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
            if data.startswith(DECLINE):
                return None
            return decode_reply(data)
        except (OSError, ValueError) as exc:
            msg = f"lost the connection to the daemon at {path}: {exc}"
            return 1, try_later(msg), ""
    finally:
        sock.close()


def _warn(text: str) -> None:
    try:  # noqa: SIM105 -- contextlib would be an import on the fast path
        posix.write(2, text.encode("utf-8", "surrogateescape"))
    except OSError:
        pass


def try_later(msg: str) -> str:
    quoted = _json.encode_basestring_ascii(msg)
    return '{\n    "cniVersion": "1.1.0",\n    "code": 11,\n    "msg": ' + quoted + "\n}"
