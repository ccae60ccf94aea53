"""Follow ``<prefix>/config`` while the daemon runs: apply live what can change live.

Flannel reads the network config once; changing it means restarting every
node.  Here the daemon re-reads the key once per resync interval (one small
GET; a watch would save nothing worth the extra stream, and a poll survives
etcd outages without any resume logic).  When the text changes:

* settings that shape the node (Network, SubnetLen, SubnetMin/Max, the
  IPv4/IPv6 switches, EnableNFTables, the backend Type) cannot be applied
  live: the daemon logs, once per change, that they need a restart and keeps
  running with the old values - it does not exit (its data path is fine);
* with the same backend Type, the backend gets the new config through
  ``Backend.reconfigure()``: it applies its live options (VXLAN:
  DirectRouting) and names the ones that need a restart (VNI, Port, ...);
* then ``on_change`` runs (the daemon triggers a reconcile pass with a base
  check), so the kernel converges within one pass.

An invalid or deleted config is reported once and ignored: the running
config stays in force until a valid one appears.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from flannelish.errors import FlannelishError

log = logging.getLogger("flannelish.daemon")

# NetworkConfig field -> how an operator spells it in the config JSON
FIELD_NAMES = {
    "network": "Network",
    "subnet_len": "SubnetLen",
    "subnet_min": "SubnetMin",
    "subnet_max": "SubnetMax",
    "enable_ipv4": "EnableIPv4",
    "enable_ipv6": "EnableIPv6",
    "ipv6_network": "IPv6Network",
    "ipv6_subnet_len": "IPv6SubnetLen",
    "ipv6_subnet_min": "IPv6SubnetMin",
    "ipv6_subnet_max": "IPv6SubnetMax",
    "enable_nftables": "EnableNFTables",
    "backend_type": "Backend.Type",
}


def fingerprint(config: Any) -> tuple[Any, str]:
    """What identifies a config version: its fields plus the raw Backend section.

    (NetworkConfig compares without ``backend``; keys are folded like Go's decoder.)
    """
    backend = {str(k).lower(): v for k, v in (getattr(config, "backend", None) or {}).items()}
    return config, json.dumps(backend, sort_keys=True, default=str)


def restart_fields(running: Any, new: Any) -> list[str]:
    """Names of the node-level settings that differ (none of them can change live)."""
    names = []
    for f in fields(running):
        if f.name == "backend" or not f.compare:
            continue
        if getattr(running, f.name) != getattr(new, f.name):
            names.append(FIELD_NAMES.get(f.name, f.name))
    return names


class ConfigWatch:
    """Polls the network config and hands changes to the running backend."""

    def __init__(
        self,
        read: Callable[[], Any],
        running: Any,
        backend: Any,
        on_change: Callable[[], None],
        interval: float,
    ) -> None:
        self._read = read  # e.g. lambda: manager.get_network_config(wait=False)
        self.running = running  # the config the daemon started with
        self._backend = backend
        self._on_change = on_change
        self.interval = interval
        self._seen = fingerprint(running)
        self._last_problem: str | None = None
        self.restart_needed: list[str] = []  # settings changed in etcd but not applied
        self.changes = 0  # config versions handled (for tests and status)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.poll()

    def poll(self) -> bool:
        """Read the config once; True if a new version was handled."""
        try:
            config = self._read()
        except FlannelishError as exc:
            self._problem(f"cannot read the network config: {exc}; keeping the running one")
            return False
        if config is None:
            return False
        if self._last_problem is not None:
            log.info("network config readable again")
            self._last_problem = None
        seen = fingerprint(config)
        if seen == self._seen:
            return False
        self._seen = seen
        self.changes += 1
        self._apply(config)
        return True

    def _problem(self, message: str) -> None:
        if message != self._last_problem:  # once per distinct problem, not every poll
            self._last_problem = message
            log.warning(message)

    def _apply(self, config: Any) -> None:
        restart = restart_fields(self.running, config)
        if config.backend_type == self.running.backend_type:
            try:
                restart += [f"Backend.{name}" for name in self._backend.reconfigure(config)]
            except FlannelishError as exc:
                log.error(
                    "new Backend section ignored, the running one stays in force: %s",
                    exc,
                )
        self.restart_needed = restart
        log.info("network config changed in etcd", extra={"restart_needed": ",".join(restart)})
        if restart:
            log.warning(
                "network config change needs a restart of the daemon: %s "
                "(running with the old values until then)",
                ", ".join(restart),
                extra={"restart_needed": ",".join(restart)},
            )
        self._on_change()
