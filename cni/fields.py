"""Checked reads of netconf and prevResult fields: a CniError naming the field, never an exception.

Shared by :mod:`cni.netconf` (the network configuration) and :mod:`cni.prevresult`
(a previous result handed back by the runtime).  Standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannelish.errors import CniCode

from .protocol import CniError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")  # fullmatch: no "\n" after it


def invalid(msg: str, details: str | None = None) -> CniError:
    return CniError(CniCode.INVALID_CONFIG, msg, details)


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"  # repr() of a deep value would recurse too
    return text if len(text) <= 80 else text[:77] + "..."


# Widths of the kernel attributes that netconf / prevResult integers end up in.
U8_MAX = 2**8 - 1
U32_MAX = 2**32 - 1


def _get_int(doc: dict, key: str, low: int, high: int, where: str = "") -> int | None:
    """doc[key] as an integer in [low, high] (None if absent); code 7 otherwise."""
    value = _get(doc, key, int, None, where)
    if value is not None and not low <= value <= high:
        raise invalid(f'invalid "{where}{key}": {value} is outside {low}..{high}')
    return value


def _get(doc: dict, key: str, kind: type | tuple[type, ...], default: Any, where: str = "") -> Any:
    """doc[key] if it has the right JSON type (bool is not an int here)."""
    if key not in doc or doc[key] is None:
        return default
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false must not pass as the integers 1/0.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = "/".join(
            {bool: "boolean", int: "integer", str: "string", list: "list", dict: "object"}[k]
            for k in kinds
        )
        raise invalid(f'invalid "{where}{key}": expected a {names}, got {_show(value)}')
    return value


def _path(doc: dict, key: str, default: str, where: str = "") -> str:
    """A file system path: a string the kernel can take (no NUL byte)."""
    value = _get(doc, key, str, default, where)
    if "\0" in value:
        raise invalid(f'invalid "{where}{key}": a path cannot contain a NUL character')
    return value


def parse_ip(value: Any, field_name: str) -> IPAddress:
    """An address, also given as "<ip>/<prefix>" (the prefix must then be valid)."""
    if isinstance(value, str):
        try:
            if "/" in value:
                return ipaddress.ip_interface(value).ip
            return ipaddress.ip_address(value)
        except ValueError:
            pass
    raise invalid(f'invalid "{field_name}": not an IP address: {_show(value)}')


def parse_cidr(value: Any, field_name: str) -> IPNetwork:
    if isinstance(value, str) and "/" in value:
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            pass
    raise invalid(f'invalid "{field_name}": not a CIDR: {_show(value)}')


def parse_mac(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
        raise invalid(f'invalid "{field_name}": not a MAC address: {_show(value)}')
    if int(value[:2], 16) & 1:
        raise invalid(f'invalid "{field_name}": {value} is a multicast MAC address')
    return value.lower()
