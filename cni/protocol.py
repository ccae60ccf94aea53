"""The CNI protocol surface: versions, environment, error objects.

Everything here is standard library only, because the entry point imports it
on every invocation.  The validation rules and messages follow the reference
`skel` library (docs/cni-compat.md §1, §2), so a runtime sees the same codes from
flannelish-cni as from the reference plugins:

* unknown/missing env variables, bad container ID or ifname -> code 4
* stdin that is not a JSON object -> code 6
* unsupported or unparseable ``cniVersion`` -> code 1 (details name both sides)
* missing/invalid network ``name`` -> code 7
"""

from __future__ import annotations

import json
import re

from flannelish.errors import CniCode, FlannelishError

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
PLUGIN_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# The reference library validates container IDs and network names alike.  Always
# used with fullmatch: with match() and "$", "c3\n" would pass.
# ASCII classes only: \d would also match other scripts' digits.
_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_VERSION_RE = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)")

# Which attachment variables each command needs (docs/cni-compat.md §1 table; CNI_PATH is
# required like the reference library does, except for STATUS).
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
}


class CniError(FlannelishError):
    """An error with an explicit CNI code; the entry point prints it as the error object."""

    def __init__(self, code: int, msg: str, details: str | None = None) -> None:
        super().__init__(msg, details)
        self.cni_code = CniCode(code)


def version_tuple(version: str) -> tuple[int, int, int]:
    match = _VERSION_RE.fullmatch(version)
    if not match:
        raise ValueError(version)
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def incompatible_version(config_version: object) -> CniError:
    supported = " ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return CniError(
        CniCode.INCOMPATIBLE_VERSION,
        "incompatible CNI versions",
        f"config is {json.dumps(config_version)}, plugin supports [{supported}]",
    )


def check_version(version: object) -> str:
    """The config's cniVersion if this plugin speaks it, else a code-1 error."""
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise incompatible_version(version if version is not None else "0.1.0")
    return version


def validate_ifname(name: str, what: str = "interface name") -> None:
    """Linux interface-name rules, with the reference library's messages (code 4)."""
    if not name:
        raise CniError(CniCode.INVALID_ENV, f"{what} is empty")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # bytes that are not UTF-8 (surrogateescape'd by main)
        raise CniError(
            CniCode.INVALID_ENV, f"{what} contains an invalid character", ascii(name)
        ) from None
    if size > 15:
        raise CniError(
            CniCode.INVALID_ENV,
            f"{what} is too long",
            f"{what} should be less than 16 characters",
        )
    if name in (".", ".."):
        raise CniError(CniCode.INVALID_ENV, f"{what} is . or ..")
    for char in name:
        if char in "/:" or char.isspace():
            raise CniError(CniCode.INVALID_ENV, f"{what} contains an invalid character", name)


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


class Invocation:
    """One plugin call: the command and attachment parameters from the environment."""

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: str = "",
        path: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command, self.container_id, self.netns = command, container_id, netns
        self.ifname, self.args = ifname, args
        self.path: list[str] = path or []
        self.env: dict[str, str] = env or {}

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Invocation:
        command = env.get("CNI_COMMAND", "")
        if not command:
            raise CniError(CniCode.INVALID_ENV, "required env variables [CNI_COMMAND] missing")
        if command not in COMMANDS:
            raise CniError(CniCode.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
        missing = [name for name in _REQUIRED_ENV.get(command, ()) if not env.get(name)]
        if missing:
            raise CniError(
                CniCode.INVALID_ENV, f"required env variables [{','.join(missing)}] missing"
            )
        inv = cls(
            command=command,
            container_id=env.get("CNI_CONTAINERID", ""),
            netns=env.get("CNI_NETNS", ""),
            ifname=env.get("CNI_IFNAME", ""),
            args=env.get("CNI_ARGS", ""),
            path=[p for p in env.get("CNI_PATH", "").split(":") if p],
            env=env,
        )
        if command in ("ADD", "DEL", "CHECK"):
            if not is_valid_id(inv.container_id):
                raise CniError(
                    CniCode.INVALID_ENV, "invalid characters in containerID", inv.container_id
                )
            validate_ifname(inv.ifname)
        return inv


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS `K=V;K2=V2`; unknown keys are an error unless IgnoreUnknown is true."""
    known = {"IP", "MAC", "IgnoreUnknown"}
    pairs: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(CniCode.INVALID_ENV, "CNI_ARGS: invalid pair", item)
        pairs[key] = value
    ignore = pairs.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = [f"{k}={v}" for k, v in pairs.items() if k not in known]
    if unknown and not ignore:
        raise CniError(CniCode.INVALID_ENV, f"ARGS: unknown args {json.dumps(unknown)}")
    return pairs


def parse_stdin(data: bytes) -> dict:
    """The netconf object from stdin, or a code-6 error."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CniError(CniCode.DECODE_FAILURE, f"error unmarshall network config: {exc}") from None
    if not isinstance(doc, dict):
        raise CniError(
            CniCode.DECODE_FAILURE,
            "error unmarshall network config: expected a JSON object",
            type(doc).__name__,
        )
    return doc


def error_document(exc: BaseException, version: str) -> str:
    """The CNI error object for any exception (internal ones get code 999)."""
    if isinstance(exc, FlannelishError):
        code, msg, details = int(exc.cni_code), exc.msg, exc.details
    else:
        code, msg, details = int(CniCode.INTERNAL), f"{type(exc).__name__}: {exc}", None
    doc: dict[str, object] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        doc["details"] = details
    return json.dumps(doc, indent=4)


def version_document(version: str) -> str:
    return json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
