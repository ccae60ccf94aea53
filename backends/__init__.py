"""Backends (imported as flannelish.backends): how peers' subnets are reached.

Adding a backend means adding one module here and one line to ``REGISTRY``.
"""

from __future__ import annotations

import importlib
from typing import Any

from flannelish.errors import ConfigError

# backend type (lower case, as in the network config) -> "module:Class"
REGISTRY: dict[str, str] = {
    "vxlan": "vxlan:VxlanBackend",
    "host-gw": "hostgw:HostGwBackend",
    "wireguard": "wireguard:WireguardBackend",
}


def get_backend_class(backend_type: str) -> Any:
    target = REGISTRY.get(backend_type.lower())
    if target is None:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise ConfigError(f'unknown backend type "{backend_type}"', f"supported: {known}")
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(f"flannelish.backends.{module_name}")
    return getattr(module, class_name)
