"""The wireguard backend's options (Flannel's Backend keys) and Mode auto's choice of family.

See backends/wireguard.py for what each Mode builds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannelish.backends.base import option_integer

from flannelish.errors import ConfigError
from flannelish.kernel.wireguard_keys import valid_key

DEFAULT_PORT = 51820
DEFAULT_PORT_V6 = 51821
OVERHEAD = 80  # outer IPv6 40 + UDP 8 + WireGuard 32: one value for both families
MIN_MTU = 68
MODES = ("separate", "auto", "ipv4", "ipv6")


@dataclass(frozen=True)
class WireguardOptions:
    psk: str | None = None
    listen_port: int = DEFAULT_PORT
    listen_port_v6: int = DEFAULT_PORT_V6
    mtu: int | None = None
    mode: str = "separate"
    keepalive: int = 0

    @classmethod
    def parse(
        cls, raw: dict[str, Any] | None, enable_ipv6: bool = False, enable_ipv4: bool = True
    ) -> WireguardOptions:
        fields = {str(k).lower(): v for k, v in (raw or {}).items()}

        integer = functools.partial(option_integer, fields)

        psk = fields.get("psk")
        if psk in (None, ""):
            psk = None
        elif not valid_key(psk):
            raise ConfigError(
                "Backend.PSK must be a base64 32-byte key", "make one with `wg genpsk`"
            )
        mode = fields.get("mode")
        if mode in (None, ""):
            mode = "separate"  # Flannel's default
        if not isinstance(mode, str) or mode.lower() not in MODES:
            raise ConfigError(f"Backend.Mode must be one of {', '.join(MODES)}", f"got {mode!r}")
        mode = mode.lower()
        # Go's decoder is case-sensitive on values: "IPv6" is no Mode there.  We accept
        # any case (the value names one mode either way) and say so in the docs.
        if mode == "ipv6" and not enable_ipv6:
            raise ConfigError(
                'Backend.Mode "ipv6" needs EnableIPv6',
                "peers dial our IPv6 address and the port in our lease's IPv6 half",
            )
        if mode == "ipv4" and not enable_ipv4:
            raise ConfigError(
                'Backend.Mode "ipv4" on an IPv6-only network (EnableIPv4 false)',
                'use "ipv6", "auto" or "separate"',
            )
        port = integer("listenport", "ListenPort", 1, 65535) or DEFAULT_PORT
        port6 = integer("listenportv6", "ListenPortV6", 1, 65535) or DEFAULT_PORT_V6
        if mode == "separate" and enable_ipv4 and enable_ipv6 and port == port6:
            raise ConfigError(
                "Backend.ListenPort and ListenPortV6 must differ in Mode separate",
                f"flannel-wg and flannel-wg-v6 cannot both listen on {port}",
            )
        return cls(
            psk=psk,
            listen_port=port,
            listen_port_v6=port6,
            mtu=integer("mtu", "MTU", MIN_MTU + OVERHEAD, 65535),
            mode=mode,
            keepalive=integer(
                "persistentkeepaliveinterval", "PersistentKeepaliveInterval", 0, 65535
            )
            or 0,
        )


def _private4(ip: IPv4Address) -> bool:
    """Flannel's IP4.IsPrivate: RFC 1918 only (not 100.64/10, not 198.18/15)."""
    return (
        ip in IPv4Network("10.0.0.0/8")
        or ip in IPv4Network("172.16.0.0/12")
        or (ip in IPv4Network("192.168.0.0/16"))
    )


def _private6(ip: IPv6Address) -> bool:
    """Flannel's IP6.IsPrivate: fc00::/7 (unique local)."""
    return ip in IPv6Network("fc00::/7")


def auto_family(
    peer4: IPv4Address | None,
    peer6: IPv6Address | None,
    our4: IPv4Address | None,
    our6: IPv6Address | None,
) -> int | None:
    """Mode auto: the underlay family to reach a peer on (4, 6, or None: no common one).

    Flannel's rule where both families are possible: IPv4 if the peer's IPv4 is
    not private and we have IPv4; else IPv6 if both IPv6 addresses are not
    private; else IPv4.  Where only one family is common to both, that one
    (Flannel would dial ``0.0.0.0``).
    """
    can4 = peer4 is not None and not peer4.is_unspecified and our4 is not None
    can6 = peer6 is not None and our6 is not None
    if not can6:
        return 4 if can4 else None
    if not can4:
        return 6
    assert peer4 is not None and peer6 is not None and our6 is not None
    if not _private4(peer4):
        return 4
    if not _private6(peer6) and not _private6(our6):
        return 6
    return 4
