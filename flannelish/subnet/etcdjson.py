"""The records read from etcd, and decoding etcd's JSON gateway answers into them.

etcd's v3 JSON gateway (docs/dependencies.md §1) writes protobuf messages as
JSON: bytes fields are base64, int64 fields are decimal strings, enums are
names, and fields at their zero value are left out.  Nothing in an answer is
trusted: a field of the wrong type, bad base64 or an out-of-range number is a
MalformedAnswer, which the store reports as an EtcdError.  Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

_INT64 = 1 << 63


class MalformedAnswer(Exception):
    """An answer from etcd that is not what its API promises."""


@dataclass(frozen=True)
class KeyValue:
    """One key as read from etcd (or from a watch event).

    ``oversized``: the value was too large to receive at all (over the
    receive limit even alone); ``value`` is then empty.
    """

    key: str
    value: bytes
    mod_revision: int
    lease_id: int
    oversized: bool = False


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_object(body: bytes) -> dict[str, Any]:
    """A JSON object from an answer body; MalformedAnswer for anything else."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedAnswer(f"not JSON: {_snippet(body)} ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise MalformedAnswer(f"not a JSON object: {_snippet(body)}")
    return value


def obj(msg: dict[str, Any], name: str) -> dict[str, Any]:
    value = msg.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedAnswer(f"{name!r} is not an object")
    return value


def items(msg: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = msg.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise MalformedAnswer(f"{name!r} is not a list of objects")
    return value


def int64(msg: dict[str, Any], name: str) -> int:
    """An int64 field: a decimal string (or a JSON number), 0 when absent."""
    value = msg.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedAnswer(f"{name!r} is not an integer")
    try:
        number = int(value)  # int() also caps the length of a decimal string
    except ValueError:
        raise MalformedAnswer(f"{name!r} is not an integer: {str(value)[:40]!r}") from None
    if not -_INT64 <= number < _INT64:
        raise MalformedAnswer(f"{name!r} is out of range")
    return number


def flag(msg: dict[str, Any], name: str) -> bool:
    value = msg.get(name, False)
    if not isinstance(value, bool):
        raise MalformedAnswer(f"{name!r} is not a boolean")
    return value


def text(msg: dict[str, Any], name: str) -> str:
    value = msg.get(name, "")
    if not isinstance(value, str):
        raise MalformedAnswer(f"{name!r} is not a string")
    return value


def raw(msg: dict[str, Any], name: str) -> bytes:
    """A bytes field: strict base64, empty when absent."""
    value = text(msg, name)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedAnswer(f"{name!r} is not base64") from None


def revision(msg: dict[str, Any]) -> int:
    """The revision in an answer's header (0 when absent)."""
    return int64(obj(msg, "header"), "revision")


def key_value(kv: dict[str, Any], oversized: bool = False) -> KeyValue:
    return KeyValue(
        raw(kv, "key").decode(errors="replace"),
        b"" if oversized else raw(kv, "value"),
        int64(kv, "mod_revision"),
        int64(kv, "lease"),
        oversized,
    )


def watch_event(event: dict[str, Any]) -> WatchEvent:
    kind = event.get("type", "PUT")
    if kind not in ("PUT", "DELETE", 0, 1):
        raise MalformedAnswer(f"unknown watch event type {str(kind)[:20]!r}")
    return WatchEvent(kind in ("DELETE", 1), key_value(obj(event, "kv")))


def _snippet(body: bytes) -> str:
    line = body[:80].decode(errors="replace").splitlines()
    return repr(line[0] if line else "")


def prefix_range_end(prefix: bytes) -> bytes:
    """The end of etcd's range of every key starting with `prefix`."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"
