"""The Backend interface: how a node reaches its peers' subnets.

A backend is constructed from a :class:`BackendContext` (the kernel handle,
the chosen external interface, the network config and a state directory)
and is then driven by the daemon in this order:

1. ``setup()`` before the lease: create or adopt its device, so the lease can
   advertise it (``lease_attrs()``, e.g. the VTEP MAC);
2. ``bind_lease(lease)`` once the subnet is known (addresses on the device);
3. repeatedly, from the reconciler: ``ensure_base()`` repairs the device and
   says whether it had to be rebuilt, ``resources()`` names the kinds of
   kernel objects it owns (in apply order) and ``plan(peer)`` returns the
   objects one peer needs, in the order they must be applied;
4. when the network config in etcd changes while running (same backend
   type): ``reconfigure(config)`` applies what it can live and names what
   needs a restart; the daemon then runs a pass, so ``plan()`` decides anew.

The backend never diffs or applies anything itself: the reconciler compares
``plan()`` for all peers with the ``resources()`` dumps.  So a new backend is
one module here that implements this class, plus one line in ``REGISTRY``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, ClassVar

from flannelish.errors import ConfigError
from flannelish.kernel.netlink import Netlink
from flannelish.kernel.resources import Resource, Skip
from flannelish.subnet.lease import Lease, LeaseAttrs


@dataclass(frozen=True)
class ExternalInterface:
    """The underlay interface the node talks to its peers on."""

    name: str
    index: int
    address: IPv4Address  # the interface's own IPv4 address (0.0.0.0: none, IPv6-only)
    public_ip: IPv4Address  # what peers send to (differs from address behind NAT)
    mtu: int
    address6: IPv6Address | None = None  # the interface's own global IPv6 address
    public_ipv6: IPv6Address | None = None  # what IPv6 peers send to


@dataclass(frozen=True)
class BackendContext:
    netlink: Netlink
    ext: ExternalInterface
    network: (
        Any  # flannelish.subnet.config.NetworkConfig (network, backend_type, backend dict, ...)
    )
    state_dir: Path  # persistent node state (e.g. the VTEP MAC), next to subnet.env


class Backend(ABC):
    backend_type: ClassVar[str]  # as in the network config, lower case

    def __init__(self, ctx: BackendContext) -> None:
        self.ctx = ctx

    @property
    @abstractmethod
    def mtu(self) -> int:
        """The MTU pods must use (written to subnet.env)."""

    @abstractmethod
    def setup(self) -> None:
        """Create or adopt the backend's device; runs before the lease exists."""

    @abstractmethod
    def lease_attrs(self) -> LeaseAttrs:
        """What this node advertises in its lease."""

    @abstractmethod
    def bind_lease(self, lease: Lease) -> None:
        """Configure the device for our (possibly new) lease."""

    @abstractmethod
    def ensure_base(self) -> bool:
        """Repair the device; True if it had to be rebuilt (so every peer is replayed)."""

    @abstractmethod
    def resources(self) -> Sequence[Resource]:
        """Kinds of owned kernel objects, in the order one peer's objects are applied."""

    def validate(self, peer: Lease) -> Skip | None:
        """Checks of the lease alone (backend type, backend data): a Skip, or None if fine.

        Runs on every watch event before the peer is admitted, so it must be
        cheap and must not depend on kernel state (that belongs in plan()).
        """
        return None

    def claims(self, peer: Lease) -> Sequence[Hashable]:
        """Values only one peer may hold (e.g. a VTEP MAC); the first holder keeps them."""
        return ()

    @abstractmethod
    def plan(self, peer: Lease) -> Sequence[Any] | Skip:
        """The kernel objects for one peer, in apply order, or why it is skipped."""

    def reconfigure(self, network: Any) -> list[str]:
        """A changed network config (same backend type) arrived while the daemon runs.

        Apply the options that can change live (the daemon runs a reconcile
        pass afterwards) and return the names of changed options that need a
        restart, e.g. ``["VNI"]``: those keep their running values.  Raise
        ConfigError if the new Backend section is invalid.  Default: nothing
        is live, any change to the Backend section needs a restart.
        """
        old_raw = getattr(self.ctx.network, "backend", None) or {}
        new_raw = getattr(network, "backend", None) or {}
        old, new = _folded(old_raw), _folded(new_raw)
        spelled = {str(k).lower(): str(k) for k in [*old_raw, *new_raw]}
        return sorted(spelled[k] for k in old.keys() | new.keys() if old.get(k) != new.get(k))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release non-kernel resources; the data path stays in place."""


def _folded(section: Any) -> dict[str, Any]:
    """A Backend section with keys folded to lower case (matched like Go), minus Type."""
    return {str(k).lower(): v for k, v in (section or {}).items() if str(k).lower() != "type"}


def option_integer(fields: dict[str, Any], key: str, name: str, low: int, high: int) -> int | None:
    """An integer Backend option in low..high (None if unset); a bool or a string is refused."""
    value = fields.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"Backend.{name} must be an integer", f"got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"Backend.{name} must be in {low}..{high}", f"got {value}")
    return value
