"""Turning the etcd client's errors into one readable cause (used by etcdstore and etcdwatch).

No gRPC import at module level: the CLI imports etcdstore without connecting.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flannelish.subnet.etcdoptions import EtcdOptions

TLS_HINTS = (
    "certificate_verify_failed",
    "certificate verify failed",
    "ssl handshake failed",
    "handshake failed",
    "ssl_error",
    "wrong_version_number",
    "tls",
)


def error_details(exc: BaseException) -> str:
    """The readable part of a gRPC error, also when pyetcd re-raised it as its own type."""
    for candidate in (exc, exc.__context__, exc.__cause__):
        details = getattr(candidate, "details", None)
        if callable(details):
            with contextlib.suppress(Exception):
                text = details()
                if text:
                    return str(text).replace("etcdserver: ", "")
    return str(exc)


_SOCKET_ERRORS = re.compile(
    r"connection refused|connection reset|no route to host|network is unreachable|"
    r"deadline exceeded|socket closed|connection timed out|name resolution|dns resolution",
    re.IGNORECASE,
)


def connection_cause(details: str) -> str:
    """A short cause ("connection refused") instead of gRPC's whole connect report."""
    if "handshake" in details.lower():
        return "TLS handshake failed: the server closed the connection (is it plain http://?)"
    match = _SOCKET_ERRORS.search(details)
    return match.group(0).lower() if match else details.splitlines()[0][:200] if details else ""


def error_code(exc: BaseException) -> Any:
    for candidate in (exc, exc.__context__):
        code = getattr(candidate, "code", None)
        if callable(code):
            with contextlib.suppress(Exception):
                return code()
    return None


def tls_cause(low: str, details: str, options: EtcdOptions) -> str:
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        source = f"--etcd-cafile {options.cafile!r}" if options.cafile else "the system CA store"
        return f"the etcd server certificate is not trusted by {source}"
    if "wrong_version_number" in low:
        return "the server does not speak TLS; use an http:// endpoint"
    return details.splitlines()[0][:200]


def is_too_large(exc: BaseException) -> bool:
    """gRPC refused a message over the channel's receive limit."""
    import grpc

    code = getattr(exc, "code", None)
    with contextlib.suppress(Exception):
        if callable(code) and code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return True
    return "larger than max" in str(exc)


def first_line(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = ""
    with contextlib.suppress(Exception):
        text = str(details()) if callable(details) else ""
    return (text or str(exc)).splitlines()[0][:200] if (text or str(exc)) else type(exc).__name__
