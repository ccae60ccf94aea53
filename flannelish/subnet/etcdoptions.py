"""etcd connection options: flanneld's ``--etcd-*`` flags, validated (docs/flannel-compat.md §10).

Pure standard library (no gRPC): the CLI builds an EtcdOptions before any
connection exists, and every mistake is a ConfigError naming the flag.

The password can come from ``--etcd-password-file`` (or
``FLANNELD_ETCD_PASSWORD_FILE``): a file whose content, without its trailing
newline, is the password.  Unlike ``--etcd-password`` it never shows in
``/proc/<pid>/cmdline`` or ``ps``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flannelish.errors import ConfigError

log = logging.getLogger("flannelish.subnet.etcdstore")

DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_PORT = 2379
MAX_PASSWORD_FILE_BYTES = 4096


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
        password_file: str | None = None,
    ) -> EtcdOptions:
        """Build from flag values; raises ConfigError naming the bad flag."""
        if password_file:
            if password:
                raise ConfigError(
                    "--etcd-password and --etcd-password-file are both set",
                    "give one (the file keeps the password out of the process list)",
                )
            password = read_password_file(password_file)
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
        for flag, path, marker in (
            ("--etcd-cafile", cafile, "CERTIFICATE-----"),
            ("--etcd-certfile", certfile, "CERTIFICATE-----"),
            ("--etcd-keyfile", keyfile, "PRIVATE KEY-----"),
        ):
            if path:
                _check_pem(flag, path, marker)
        if bool(username) != bool(password):
            raise ConfigError(
                "--etcd-username and --etcd-password (or --etcd-password-file) "
                "must be given together",
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


def read_password_file(path: str) -> str:
    """The password in `path` without its trailing newline; ConfigError if unusable."""
    flag = "--etcd-password-file"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}", exc.strerror or str(exc)) from None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise ConfigError(f"{flag}: {path!r} is larger than {MAX_PASSWORD_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{flag}: {path!r} is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise ConfigError(f"{flag}: {path!r} is empty")
    if "\n" in text:
        raise ConfigError(f"{flag}: {path!r} holds more than one line")
    return text


def _check_pem(flag: str, path: str, marker: str) -> None:
    """Fail early: gRPC would only print C-level errors and report the endpoint unreachable."""
    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ConfigError(f"{flag}: cannot read {path!r}", _why_unreadable(path))
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}", exc.strerror) from None
    if marker.encode() not in text:
        kind = "private key" if "KEY" in marker else "certificate"
        raise ConfigError(f"{flag}: {path!r} is not a PEM {kind}", f"no '-----BEGIN ...{marker}'")


def _why_unreadable(path: str) -> str:
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "it is a directory"
    return "permission denied"
