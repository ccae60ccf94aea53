"""Lease records and watch events, with Flannel's exact JSON encoding.

The value stored under ``<prefix>/subnets/<key>`` must be byte-identical to
what flanneld writes (docs/flannel-compat.md §3) so that both can share one etcd:
compact JSON, fields in the order PublicIP, PublicIPv6, BackendType,
BackendData, BackendV6Data, with the last three left out when empty.

One addition Flannel ignores (Go's decoder skips unknown fields): ``NodeID``,
the node's persistent identity (32 lower-case hex digits, generated once and
kept in the daemon's state directory), written last.  It tells a host
restarting (same ID: keeps its lease) from a second host claiming a live
lease's PublicIP (another ID: refused).  A lease without it (flanneld's, an
operator's reservation) identifies nobody and is reused by PublicIP as before.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannelish.errors import FlannelishError
from flannelish.subnet.jsonvalue import MAX_VALUE_BYTES, loads_bounded
from flannelish.subnet.keys import LeaseKey, parse_ipv4

NODE_ID = re.compile(r"[0-9a-f]{32}")


class LeaseDecodeError(FlannelishError):
    """A lease value in etcd is not valid Flannel lease JSON (a "bad lease").

    The only exception :meth:`LeaseAttrs.from_json` raises, whatever the value:
    too large (over ``MAX_VALUE_BYTES``), nested too deeply, not UTF-8, not
    JSON, or with fields of the wrong type.
    """


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """What a node advertises about itself (the JSON value of a lease key)."""

    public_ip: IPv4Address
    backend_type: str = ""
    backend_data: dict[str, Any] | None = None
    public_ipv6: IPv6Address | None = None
    backend_v6_data: dict[str, Any] | None = None
    node_id: str | None = None

    @property
    def vtep_mac(self) -> str | None:
        """The VXLAN VTEP MAC from BackendData, lower-case colon hex, if any."""
        mac = (self.backend_data or {}).get("VtepMAC")
        return normalize_mac(mac) if isinstance(mac, str) else None

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "PublicIP": str(self.public_ip),
            "PublicIPv6": str(self.public_ipv6) if self.public_ipv6 else None,
        }
        if self.backend_type:
            doc["BackendType"] = self.backend_type
        if self.backend_data:
            doc["BackendData"] = self.backend_data
        if self.backend_v6_data:
            doc["BackendV6Data"] = self.backend_v6_data
        if self.node_id:
            doc["NodeID"] = self.node_id
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str, max_bytes: int = MAX_VALUE_BYTES) -> LeaseAttrs:
        """Decode a lease value; LeaseDecodeError (never anything else) if it is bad."""
        try:
            doc = loads_bounded(raw, max_bytes=max_bytes)
        except ValueError as exc:
            raise LeaseDecodeError("lease value is not valid JSON", str(exc)) from None
        if not isinstance(doc, dict):
            raise LeaseDecodeError("lease value is not a JSON object", repr(raw)[:80])
        # Go's encoding/json matches field names case-insensitively.
        fields = {k.lower(): v for k, v in doc.items()}
        for name in ("publicip", "publicipv6"):
            # Go decodes these from JSON strings only; IPv4Address(5) would accept a number.
            if fields.get(name) is not None and not isinstance(fields[name], str):
                raise LeaseDecodeError("lease has an invalid PublicIP", repr(fields[name])[:80])
        try:
            public_ip = parse_ipv4(fields.get("publicip") or "")
            v6 = fields.get("publicipv6")
            public_ipv6 = IPv6Address(v6) if v6 else None
        except ValueError as exc:
            raise LeaseDecodeError("lease has an invalid PublicIP", str(exc)) from None
        backend_type = fields.get("backendtype") or ""
        data = fields.get("backenddata")
        data_v6 = fields.get("backendv6data")
        if not isinstance(backend_type, str):
            raise LeaseDecodeError("lease BackendType is not a string", repr(backend_type))
        for name, value in (("BackendData", data), ("BackendV6Data", data_v6)):
            if value is not None and not isinstance(value, dict):
                raise LeaseDecodeError(f"lease {name} is not an object", repr(value)[:80])
        node_id = fields.get("nodeid")
        if not (isinstance(node_id, str) and NODE_ID.fullmatch(node_id)):
            node_id = None  # malformed: identifies nobody (Flannel would not look at it)
        # Every lease spells out "vxlan", "VNI" and "VtepMAC" again: one shared copy
        # of each saves ~100 B per peer (the daemon keeps every peer's lease).
        return cls(
            public_ip,
            sys.intern(backend_type),
            _shared_keys(data),
            public_ipv6,
            _shared_keys(data_v6),
            node_id,
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet held by one node.

    ``expiration`` is a Unix timestamp, or None for a reservation: a key an
    operator wrote without an etcd lease, which never expires (docs/flannel-compat.md §3).
    """

    subnet: IPv4Network
    attrs: LeaseAttrs
    expiration: float | None = None
    lease_id: int = 0
    ipv6_subnet: IPv6Network | None = None
    mod_revision: int = field(default=0, compare=False)
    # The lease's identity (both families), what peers are keyed by: made once,
    # so the peer table, the reconciler and the firewall owner all hold one
    # object per lease (at 5000 peers each copy cost about 0.5 MB).
    key: LeaseKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", LeaseKey.of(self.subnet, self.ipv6_subnet))

    @property
    def reserved(self) -> bool:
        return self.lease_id == 0

    @property
    def ipv4_subnet(self) -> IPv4Network | None:
        """The IPv4 subnet, None for an IPv6-only lease."""
        return self.key.v4


class EventType(enum.Enum):
    ADDED = "added"  # new peer, renewal, or changed attributes (see Event.previous)
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Event:
    """A change in the set of leases.

    ``previous`` carries the attributes known before the change: set on
    REMOVED and on an ADDED that replaced different attributes (a new VTEP MAC
    or PublicIP), so backends can delete the stale kernel entries.
    """

    type: EventType
    lease: Lease
    previous: LeaseAttrs | None = None


def _shared_keys(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """`data` with interned keys (JSON object keys are strings); None if empty."""
    return {sys.intern(k): v for k, v in data.items()} if data else None


_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def normalize_mac(mac: str) -> str:
    """Lower-case colon-separated form of a MAC in any common notation."""
    if _CANONICAL_MAC.fullmatch(mac):  # how every lease carries it: the cold start's common case
        return mac
    digits = "".join(c for c in mac if c not in ":-.").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise LeaseDecodeError("invalid MAC address", mac)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
