"""Turning a failed etcd request into one readable cause (used by etcdstore and etcdwatch).

classify() sorts a failure into the kind that decides what the store does
next (fail over, re-authenticate, give up) and a one-line cause for people.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from flannelish.subnet.etcdhttp import GatewayError, TooLarge, TransportError
from flannelish.subnet.etcdjson import MalformedAnswer

if TYPE_CHECKING:
    from flannelish.subnet.etcdoptions import EtcdOptions

# gRPC status codes after which another member may answer (etcd's own client
# fails over on these too): unavailable ("no leader"), deadline exceeded, internal.
_FAILOVER_CODES = {4, 13, 14}
_PERMISSION_DENIED = 7
# A watch's cancel reason carries the gRPC status: "rpc error: code = X desc = ...".
_RPC_PREFIX = re.compile(r"^rpc error: code = \w+ desc = ")


class NoMemberAvailable(Exception):
    """Every member failed within the last `retry_failed_after` seconds."""


def plain_reason(message: str) -> str:
    """etcd's message without its "etcdserver: " and gRPC status prefixes."""
    return _RPC_PREFIX.sub("", message.strip()).replace("etcdserver: ", "")


def classify(exc: BaseException, options: EtcdOptions) -> tuple[str, str]:
    """(kind, one-line cause).

    kind: "unavailable" (this member failed: try another), "waiting" (every
    member failed recently), "tls", "auth", "token" (re-authenticate) or "other".
    """
    if isinstance(exc, NoMemberAvailable):
        return "waiting", "every etcd member failed recently"
    if isinstance(exc, TransportError):
        if exc.tls:
            return "tls", tls_cause(exc.cause, options)
        return "unavailable", exc.cause
    if isinstance(exc, MalformedAnswer):
        return "other", f"etcd's answer is malformed: {exc}"
    if isinstance(exc, TooLarge):
        return "other", f"etcd's answer is too large: {exc}"
    if not isinstance(exc, GatewayError):
        return "other", (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
    return classify_reason(plain_reason(exc.message), exc.code, options)


def classify_reason(details: str, code: int, options: EtcdOptions) -> tuple[str, str]:
    low = details.lower()
    if "invalid auth token" in low or "auth: revision in header is old" in low:
        return "token", details
    if options.username and ("authentication failed" in low or "invalid user id" in low):
        return "auth", f"wrong --etcd-username or --etcd-password for user {options.username!r}"
    if "user name is empty" in low or "user name not found" in low:
        if not options.username:
            return (
                "auth",
                "etcd has authentication enabled; give --etcd-username and --etcd-password",
            )
        return "auth", f"etcd user {options.username!r} does not exist"
    if "certificate with a commonname refused" in low:
        # A CN in --etcd-certfile makes the store use gRPC (docs/dependencies.md §1),
        # so the gateway saw a certificate we read differently.
        return "auth", (
            "etcd's JSON gateway refused the client certificate for its CommonName (CN), "
            "but the first certificate in --etcd-certfile has none (with a CN, "
            "flannelish would have used gRPC); check that file"
        )
    if "permission denied" in low or code == _PERMISSION_DENIED:
        if not options.username:
            return "auth", (
                "permission denied without credentials; give --etcd-username and "
                "--etcd-password (or a client certificate of a permitted etcd user)"
            )
        return "auth", f"etcd user {options.username!r} lacks permission: {details}"
    if code in _FAILOVER_CODES:
        return "unavailable", details[:200] or f"gRPC status {code}"
    return "other", details[:200] or f"gRPC status {code}"


def tls_cause(cause: str, options: EtcdOptions) -> str:
    if cause.startswith("certificate verify failed"):
        source = f"--etcd-cafile {options.cafile!r}" if options.cafile else "the system CA store"
        return f"the etcd server certificate is not trusted by {source} ({cause})"
    return cause
