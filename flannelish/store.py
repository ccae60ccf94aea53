"""etcd connection options and the thin wrapper around the etcd client library.

Only this module imports etcd-sdk-python (``pyetcd``) and gRPC, and only
inside EtcdStore, so the CLI stays fast to start.  The wrapper exists to fix
what the library leaves to its callers (deps.md §1):

* failover: a request that fails on one member is retried on the next one
  (the library marks the member failed but does not retry);
* a failed member is tried again after one second, not after 300 s;
* gRPC reconnect backoff is capped at 2 s, so a restarted etcd is used again soon;
* auth and TLS failures become EtcdAuthError/EtcdError with one readable
  cause instead of a raw gRPC status dump;
* simple auth tokens are per member and expire, so an "invalid auth token"
  answer triggers one re-authentication and a retry.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flannelish.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_PORT = 2379


@dataclass(frozen=True)
class Endpoint:
    """One etcd member URL, split into the parts gRPC needs."""

    scheme: str
    host: str
    port: int

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"


@dataclass(frozen=True)
class EtcdOptions:
    """Validated etcd connection settings (flanneld's --etcd-* flags)."""

    endpoints: list[str] = field(default_factory=lambda: DEFAULT_ENDPOINTS.split(","))
    prefix: str = DEFAULT_PREFIX
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_flags(
        cls,
        endpoints: str | list[str] | tuple[str, ...] = DEFAULT_ENDPOINTS,
        prefix: str = DEFAULT_PREFIX,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> EtcdOptions:
        """Build from flag values; raises ConfigError naming the bad flag."""
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        urls = [e.strip() for e in endpoints if e and e.strip()]
        if not urls:
            raise ConfigError("--etcd-endpoints is empty", "give at least one etcd URL")
        parsed = [str(parse_endpoint(u)) for u in urls]
        cafile, certfile, keyfile = (v or None for v in (cafile, certfile, keyfile))
        username, password = username or None, password or None
        if bool(certfile) != bool(keyfile):
            given, missing = (
                ("--etcd-certfile", "--etcd-keyfile")
                if certfile
                else ("--etcd-keyfile", "--etcd-certfile")
            )
            raise ConfigError(f"{given} needs {missing} as well")
        for flag, path in (
            ("--etcd-cafile", cafile),
            ("--etcd-certfile", certfile),
            ("--etcd-keyfile", keyfile),
        ):
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise ConfigError(f"{flag}: cannot read {path!r}", _why_unreadable(path))
        if bool(username) != bool(password):
            raise ConfigError(
                "--etcd-username and --etcd-password must be given together",
                "only --etcd-username is set" if username else "only --etcd-password is set",
            )
        if (cafile or certfile) and not any(u.startswith("https://") for u in parsed):
            log.warning(
                "TLS files are given but no --etcd-endpoints URL is https://; "
                "connecting to etcd without TLS"
            )
        return cls(parsed, normalize_prefix(prefix), cafile, certfile, keyfile, username, password)

    @property
    def parsed_endpoints(self) -> list[Endpoint]:
        return [parse_endpoint(u) for u in self.endpoints]


def parse_endpoint(url: str) -> Endpoint:
    """``http(s)://host[:port]`` (or bare ``host:port``, meaning http) to an Endpoint."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"--etcd-endpoints: invalid URL {url!r}", str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"--etcd-endpoints: {url!r} must start with http:// or https://",
            f"scheme {parts.scheme!r} is not supported",
        )
    if not parts.hostname:
        raise ConfigError(f"--etcd-endpoints: {url!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--etcd-endpoints: {url!r} must not have a path or query")
    return Endpoint(parts.scheme, parts.hostname, port)


def normalize_prefix(prefix: str) -> str:
    """Join-style cleanup as Flannel's path.Join: one leading slash, no doubles, no trailing."""
    if not prefix or not prefix.strip("/ "):
        raise ConfigError("--etcd-prefix is empty", f"got {prefix!r}")
    if any(c.isspace() for c in prefix):
        raise ConfigError("--etcd-prefix must not contain spaces", f"got {prefix!r}")
    return "/" + re.sub("/+", "/", prefix.strip("/"))


def _why_unreadable(path: str) -> str:
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "it is a directory"
    return "permission denied"
