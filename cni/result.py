"""CNI results: one internal shape (1.1.0) and its rendering per requested version.

Internally a result is a plain dict in the 1.1.0 layout.  ``render`` converts
it for the caller's ``cniVersion`` (docs/cni-compat.md §5): 1.0.0 drops the 1.1.0-only
interface and route fields; 0.4.0/0.3.x add ``ips[].version``.  ``normalize``
does the opposite for a ``prevResult`` arriving in an older shape, so chaining
works whichever version the runtime speaks.  Empty fields are omitted like the
reference does, except ``dns`` (always present).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

_IFACE_11_ONLY = ("mtu", "socketPath", "pciID")
_ROUTE_11_ONLY = ("mtu", "advmss", "priority", "table", "scope")


def new_result() -> dict[str, Any]:
    return {"interfaces": [], "ips": [], "routes": [], "dns": {}}


def normalize(prev: dict) -> dict[str, Any]:
    """A prevResult of any supported version in the internal layout (a copy)."""
    result = new_result()
    for iface in prev.get("interfaces") or []:
        if isinstance(iface, dict):
            result["interfaces"].append(dict(iface))
    for ip in prev.get("ips") or []:
        if isinstance(ip, dict):
            entry = {k: v for k, v in ip.items() if k != "version"}
            result["ips"].append(entry)
    for route in prev.get("routes") or []:
        if isinstance(route, dict):
            result["routes"].append(dict(route))
    if isinstance(prev.get("dns"), dict):
        result["dns"] = dict(prev["dns"])
    return result


def _family(address: str) -> str:
    try:
        return str(ipaddress.ip_interface(address).version)
    except ValueError:
        return "4"


def render(result: dict[str, Any], version: str) -> str:
    """The result as the reference prints it for `version` (4-space indented JSON)."""
    out: dict[str, Any] = {"cniVersion": version}
    modern = version.startswith("1.")
    if result.get("interfaces"):
        ifaces = []
        for iface in result["interfaces"]:
            item: dict[str, Any] = {k: v for k, v in iface.items() if v not in (None, "")}
            if version != "1.1.0":
                for key in _IFACE_11_ONLY:
                    item.pop(key, None)
            ifaces.append(item)
        out["interfaces"] = ifaces
    if result.get("ips"):
        ips = []
        for ip in result["ips"]:
            item = {}
            if not modern:
                item["version"] = _family(ip["address"])
            if ip.get("interface") is not None:
                item["interface"] = ip["interface"]
            item["address"] = ip["address"]
            if ip.get("gateway"):
                item["gateway"] = ip["gateway"]
            ips.append(item)
        out["ips"] = ips
    if result.get("routes"):
        routes = []
        for route in result["routes"]:
            item = {k: v for k, v in route.items() if v not in (None, "")}
            if version != "1.1.0":
                for key in _ROUTE_11_ONLY:
                    item.pop(key, None)
            routes.append(item)
        out["routes"] = routes
    out["dns"] = {k: v for k, v in (result.get("dns") or {}).items() if v}
    return json.dumps(out, indent=4)
