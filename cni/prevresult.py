"""prevResult and the result-shaped parts of a netconf (routes, DNS): validated before use.

A malformed value is code 7 naming the field (6 if undecodable), never an
exception: every integer that reaches the kernel is bounded to its field's size.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .fields import U8_MAX, U32_MAX, _get, _get_int, _show, invalid, parse_cidr, parse_ip


def parse_routes(value: Any, where: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f'invalid "{where}": expected a list, got {_show(value)}')
    routes = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "dst" not in item:
            raise invalid(f'invalid "{where}[{i}]": expected an object with "dst"')
        dst = parse_cidr(item["dst"], f"{where}[{i}].dst")
        route: dict[str, Any] = {"dst": str(dst)}
        if item.get("gw") not in (None, ""):
            gw = parse_ip(item["gw"], f"{where}[{i}].gw")
            if gw.version != dst.version:
                raise invalid(f'invalid "{where}[{i}].gw": {gw} is not an IPv{dst.version} address')
            route["gw"] = str(gw)
        for key, high in _ROUTE_INTS:
            if key in item:
                route[key] = _get_int(item, key, 0, high, f"{where}[{i}].")
        routes.append(route)
    return routes


# CNI 1.1 route fields and the width of the netlink attribute each one becomes:
# RTAX_MTU, RTAX_ADVMSS, RTA_PRIORITY, RTA_TABLE are u32, rtm_scope is u8.
_ROUTE_INTS = (
    ("mtu", U32_MAX),
    ("advmss", U32_MAX),
    ("priority", U32_MAX),
    ("table", U32_MAX),
    ("scope", U8_MAX),
)
_HW_ADDR_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5,19}")  # Ethernet .. InfiniBand


def _string_list(doc: dict, key: str, where: str) -> list[str]:
    items = _get(doc, key, list, [], where)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise invalid(f'invalid "{where}{key}[{i}]": expected a string, got {_show(item)}')
    return items


def parse_dns(value: Any, where: str) -> dict:
    """A CNI DNS object: nameservers/search/options are lists of strings, domain a string."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f'invalid "{where}": expected an object, got {_show(value)}')
    for key in ("nameservers", "search", "options"):
        _string_list(value, key, f"{where}.")
    _get(value, "domain", str, "", f"{where}.")
    return value


def parse_prev_result(value: Any) -> dict | None:
    """A prevResult (any supported version's shape), checked field by field; code 7.

    Everything CHECK compares and ADD passes on is validated here, so nothing
    malformed reaches ipaddress, int() or a netlink attribute later.  Unknown
    keys are kept: a chained plugin's result is passed through unchanged.
    """
    if value is None:
        return None
    where = "prevResult"
    if not isinstance(value, dict):
        raise invalid(f'invalid "{where}": expected an object, got {_show(value)}')
    ifaces = _get(value, "interfaces", list, [], f"{where}.")
    for i, iface in enumerate(ifaces):
        at = f"{where}.interfaces[{i}]"
        if not isinstance(iface, dict):
            raise invalid(f'invalid "{at}": expected an object, got {_show(iface)}')
        name = _get(iface, "name", str, "", f"{at}.")
        if not name:
            raise invalid(f'invalid "{at}": missing "name"')
        mac = _get(iface, "mac", str, "", f"{at}.")
        if mac and not _HW_ADDR_RE.fullmatch(mac):
            raise invalid(f'invalid "{at}.mac": not a MAC address: {_show(mac)}')
        _get_int(iface, "mtu", 0, U32_MAX, f"{at}.")
        for key in ("sandbox", "socketPath", "pciID"):
            _get(iface, key, str, "", f"{at}.")
    for i, ip in enumerate(_get(value, "ips", list, [], f"{where}.")):
        at = f"{where}.ips[{i}]"
        if not isinstance(ip, dict) or "address" not in ip:
            raise invalid(f'invalid "{at}": expected an object with "address"')
        address = ip["address"]
        if not isinstance(address, str) or "/" not in address:
            raise invalid(f'invalid "{at}.address": not a CIDR: {_show(address)}')
        try:
            iface_addr = ipaddress.ip_interface(address)
        except ValueError:
            raise invalid(f'invalid "{at}.address": not a CIDR: {_show(address)}') from None
        if ip.get("gateway") not in (None, ""):
            gw = parse_ip(ip["gateway"], f"{at}.gateway")
            if gw.version != iface_addr.version:
                raise invalid(
                    f'invalid "{at}.gateway": {gw} is not an IPv{iface_addr.version} address'
                )
        index = _get_int(ip, "interface", 0, U32_MAX, f"{at}.")
        if index is not None and index >= len(ifaces):
            raise invalid(
                f'invalid "{at}.interface": {index} is not an index into "{where}.interfaces"'
            )
        version = ip.get("version")
        if version is not None and version != str(iface_addr.version):
            raise invalid(f'invalid "{at}.version": {_show(version)} does not match {address}')
    parse_routes(value.get("routes"), f"{where}.routes")
    parse_dns(value.get("dns"), f"{where}.dns")
    return value
