"""One CNI request in, one response out: the code both execution paths share.

``handle(env, stdin, host_fd)`` is called by the entry point (in-process, host
= the plugin's own namespace) and by the daemon's CniServer (host = the
calling plugin's namespace).  It re-reads the netconf, subnet.env and the
IPAM store on every call, so both paths give identical results and nothing
can go stale.  Every failure becomes a CNI error object (never a traceback);
errors that are not ours get code 999 and one line on stderr.

Validation runs before anything touches the kernel or the disk, and the
kernel side (``bridge`` and the rtnetlink code under it) is only imported once
a request is valid.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from flannelish.errors import CniCode, FlannelishError

from . import netconf
from .protocol import (
    PLUGIN_VERSION,
    SUPPORTED_VERSIONS,
    CniError,
    Invocation,
    check_version,
    error_document,
    parse_cni_args,
    parse_stdin,
    version_document,
    version_tuple,
)


class Response(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str = ""


def _reply_version(doc: object) -> str:
    if isinstance(doc, dict):
        version = doc.get("cniVersion")
        if isinstance(version, str) and version in SUPPORTED_VERSIONS:
            return version
    return PLUGIN_VERSION


def handle(env: dict[str, str], stdin: bytes, host_fd: int | None = None) -> Response:
    version = PLUGIN_VERSION
    stderr: list[str] = []
    try:
        inv = Invocation.from_env(env)
        if inv.command == "VERSION":
            return Response(0, version_document(PLUGIN_VERSION))
        doc = parse_stdin(stdin)
        version = _reply_version(doc)
        return Response(0, _dispatch(inv, doc, host_fd, stderr), "".join(stderr))
    except Exception as exc:
        if not isinstance(exc, FlannelishError):
            stderr.append(f"flannelish-cni: internal error: {type(exc).__name__}: {exc}\n")
        elif os.environ.get("FLANNELISH_CNI_DEBUG"):
            stderr.append(f"flannelish-cni: {exc}\n")
        return Response(1, error_document(exc, version), "".join(stderr))


def _dispatch(inv: Invocation, doc: dict, host_fd: int | None, stderr: list[str]) -> str:
    command = inv.command
    cni_args = parse_cni_args(inv.args) if command in ("ADD", "DEL", "CHECK") else {}
    if command in ("GC", "STATUS"):
        config_version = check_version(doc.get("cniVersion"))
        if version_tuple(config_version) < (1, 1, 0):
            raise CniError(CniCode.INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    try:
        conf = netconf.load(doc, command, cni_args)
    except CniError as exc:
        if command == "STATUS" and exc.cni_code == CniCode.TRY_AGAIN_LATER:
            raise CniError(CniCode.STATUS_NOT_AVAILABLE, exc.msg, exc.details) from None
        raise

    if command == "ADD" and host_fd is None:
        _refuse_without_daemon(doc)
    from flannelish.cni.bridge import Call, cmd_add
    from flannelish.cni.bridge_ops import cmd_check, cmd_del, cmd_gc, cmd_status

    call = Call(inv, doc, conf, host_fd, stderr)
    if command == "ADD":
        return cmd_add(call)
    if command == "DEL":
        cmd_del(call)
    elif command == "CHECK":
        cmd_check(call)
    elif command == "GC":
        cmd_gc(call)
    elif command == "STATUS":
        cmd_status(call)
    return ""


POLICY_MARKER = "flannelish-policy.json"  # kept by the daemon's policy component


def _refuse_without_daemon(doc: dict) -> None:
    """In-process ADD (no daemon): refused where network policy is in force.

    Endpoints are registered through the daemon; a pod started without it would
    run outside every policy.  Availability yields to safety: code 11, retry.
    """
    from .client import socket_path

    marker = os.path.join(os.path.dirname(socket_path(doc)) or ".", POLICY_MARKER)
    if os.path.exists(marker):
        raise CniError(
            CniCode.TRY_AGAIN_LATER,
            "network policy is in force on this node but the flannelish daemon is not reachable;"
            " retry once it runs",
            f"{marker} exists; `flannelish uninstall` removes it",
        )
