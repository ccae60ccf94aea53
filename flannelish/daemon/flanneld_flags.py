"""Two flanneld flags with work of their own at start-up and on every pass.

* ``--net-config-path``: :func:`seed_config` writes that net-conf.json to
  ``<prefix>/config`` when etcd holds no network config (the config in etcd
  always wins; the file is validated either way).
* ``--ip-blackhole-route``: :func:`ensure_blackhole` keeps a blackhole route to
  our subnet with our route protocol at the lowest preference, so a connected
  route to the subnet (the CNI bridge's) always wins, even one added later
  (docs/flannel-compat.md §10); a lease that moved takes its blackhole along.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from flannelish.errors import ConfigError, FlannelishError
from flannelish.kernel.netlink import Netlink
from flannelish.subnet.lease import Lease

if TYPE_CHECKING:
    from flannelish.subnet.registry import Registry

log = logging.getLogger("flannelish.daemon")


def seed_config(registry: Registry, path: Path) -> None:
    from flannelish.subnet.config import parse_network_config

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read --net-config-path {path}", exc.strerror) from None
    try:
        parse_network_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"invalid network config in {path}", str(exc)) from None
    if registry.get_config() is None:
        registry.put_config(raw)
        log.info("etcd had no network config; wrote it from --net-config-path",
                 extra={"path": str(path)})  # fmt: skip


def ensure_blackhole(netlink: Netlink, lease: Lease, old: Lease | None = None) -> None:
    try:
        if old is not None and old.subnet != lease.subnet:
            netlink.del_blackhole(old.subnet)
        netlink.replace_blackhole(lease.subnet)
    except FlannelishError as exc:
        log.warning("cannot set the blackhole route for %s: %s", lease.subnet, exc)
