"""Decode a JSON value read from etcd without trusting it.

Any node can write any key under the prefix, so a value may be huge, nested
thousands of levels deep (``json.loads`` then raises RecursionError, which is
not a ValueError), not UTF-8, or full of numbers Go's decoder would refuse.
:func:`loads_bounded` turns every one of those into a ValueError with a short,
readable reason; callers wrap it in their own error type (LeaseDecodeError for
lease values, ConfigError for the network config).

Limits (documented in README, Troubleshooting, "Bad leases"):

* ``MAX_VALUE_BYTES`` = 64 KiB.  A real lease value is about 150 bytes and a
  network config well under 1 KiB; 64 KiB leaves room for any backend data
  while keeping a hostile value (etcd accepts up to 1.5 MiB by default) from
  costing more than a cheap length check.
* ``MAX_DEPTH`` = 32 levels of arrays/objects.  A lease is 2 deep, a config 2
  or 3.  Checked with one linear scan *before* json.loads, so the decoder's
  recursion is bounded whatever the thread's stack depth.
* Numbers must fit a float64 as in Go (``1e999`` or a 400-digit integer is
  refused); ``NaN``/``Infinity`` are not JSON and are refused too.
* Bytes must be UTF-8 (no BOM).  Lone UTF-16 surrogate escapes (``"\\ud800"``)
  become U+FFFD, as Go's decoder does, so the text can always be logged.

Standard library only: the CLI and the CNI side import this.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_VALUE_BYTES = 64 * 1024
MAX_DEPTH = 32
_MAX_INT_DIGITS = 309  # 10**309 > float64 max (~1.8e308): Go's decoder refuses it

_INTERESTING = re.compile(r'["\\\[\]{}]')
_SURROGATE = re.compile("[\ud800-\udfff]")


def nesting_depth(text: str, limit: int) -> int:
    """Deepest array/object nesting of `text` (brackets inside strings do not count).

    Stops counting once `limit` is exceeded (returns limit + 1), so the cost is
    one pass over the text at most; C-speed when there are few brackets.
    """
    if text.count("[") + text.count("{") <= limit:
        return min(limit, text.count("[") + text.count("{"))
    depth = deepest = 0
    in_string = False
    escaped_at = -1
    for match in _INTERESTING.finditer(text):
        pos = match.start()
        char = text[pos]
        if in_string:
            if pos == escaped_at:
                continue
            if char == "\\":
                escaped_at = pos + 1
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return limit + 1
        elif char in "]}":
            depth -= 1
    return deepest


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]}... does not fit a float64")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"number with {len(text)} digits does not fit a float64")
    return int(text)


def _parse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON value")


_DECODER = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
)


def loads_bounded(
    raw: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int = MAX_VALUE_BYTES,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """The decoded JSON document; ValueError (and nothing else) if it is not acceptable."""
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        if len(data) > max_bytes:
            raise ValueError(f"value is {len(data)} bytes, over the {max_bytes}-byte limit")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"value is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    elif isinstance(raw, str):
        text = raw
        if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise ValueError(f"value is over the {max_bytes}-byte limit")
    else:
        raise ValueError(f"value is a {type(raw).__name__}, not text")
    if nesting_depth(text, max_depth) > max_depth:
        raise ValueError(f"value nests arrays/objects more than {max_depth} levels deep")
    try:
        doc = _DECODER.decode(text)
    except RecursionError:  # cannot happen below max_depth; kept as a last line
        raise ValueError("value nests too deeply to decode") from None
    except ValueError as exc:
        raise ValueError(str(exc)[:200]) from None
    if "\\u" in text or _SURROGATE.search(text):  # escapes, or a str with raw surrogates
        doc = _fix_surrogates(doc)
    return doc


def _fix_surrogates(value: Any) -> Any:
    """Replace lone surrogates (from ``\\udXXX`` escapes) by U+FFFD, as Go does."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_fix_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_fix_surrogates(k): _fix_surrogates(v) for k, v in value.items()}
    return value
