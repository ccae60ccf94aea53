"""Names and defaults of a lab: validated in one place, derived everywhere else.

Every namespace of a lab starts with ``fl-<lab>-``.  Lab names are short
lower-case alphanumerics without a dash, so the prefix of one lab can never
be the prefix of another (``fl-a-`` vs ``fl-ab-``) and `lab down` may remove
leftovers by prefix alone.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from flannelish.errors import ConfigError

DEFAULT_NAME = "lab"
DEFAULT_STATE_ROOT = Path("/run/flannelish-lab")
UNDERLAY_NETWORK = IPv4Network("198.18.0.0/24")
POD_NETWORK = IPv4Network("10.244.0.0/16")
UNDERLAY_NETWORK6 = IPv6Network("fd18::/64")  # the ULA underlay of dual and ipv6 labs
POD_NETWORK6 = IPv6Network("fd44::/48")
POD_SUBNET_LEN6 = 64
# lab up --ip-family: which families the underlay and the pod network carry.
IP_FAMILIES = ("ipv4", "dual", "ipv6")
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
VXLAN_PORT = 8472
VNI = 1
# Every lab daemon serves /healthz, /readyz, /metrics and /status on this port inside
# its own node namespace (each node has its own loopback, so they never collide).
HEALTHZ_PORT = 10253
BRIDGE = "br0"
MAX_NODES = 50  # .1-.50 on the underlay; .254 is the bridge/etcd
MAX_PODS_PER_NODE = 50
BACKENDS = ("vxlan", "host-gw", "wireguard")
WIREGUARD_PORT = 51820
# The lab's WireGuard runs Flannel's default Mode "separate" (docs/flannel-compat.md §8a):
# one device per IP family, IPv4 pods over the IPv4 underlay to ListenPort and IPv6
# pods over the IPv6 underlay to ListenPortV6.
WIREGUARD_PORT6 = 51821
WIREGUARD_DEVICES = {4: "flannel-wg", 6: "flannel-wg-v6"}
# A unix socket path must fit in sun_path (108 bytes incl. NUL); the daemon's
# socket lives next to each node's subnet file inside the state dir.
MAX_SOCKET_PATH = 100

_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,11}")


def validate_lab_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid lab name {name!r}",
            "use 1-12 lower-case letters and digits, starting with a letter",
        )
    return name


def netns_prefix(lab: str) -> str:
    return f"fl-{lab}-"


def underlay_netns(lab: str) -> str:
    return f"{netns_prefix(lab)}ul"


def node_name(index: int) -> str:
    return f"node{index}"


def pod_name(node_index: int, pod_index: int) -> str:
    return f"{node_name(node_index)}-pod{pod_index}"


def netns_of(lab: str, short: str) -> str:
    """Namespace of a node or pod given its short name (node1, node1-pod2)."""
    return f"{netns_prefix(lab)}{short}"


def node_ip(index: int) -> IPv4Address:
    return UNDERLAY_NETWORK.network_address + index


def gateway_ip() -> IPv4Address:
    return UNDERLAY_NETWORK.network_address + 254


def node_ip6(index: int) -> IPv6Address:
    return UNDERLAY_NETWORK6.network_address + index


def gateway_ip6() -> IPv6Address:
    return UNDERLAY_NETWORK6.network_address + 0xFE


def families_of(ip_family: str) -> tuple[int, ...]:
    """The IP versions a lab of `ip_family` carries: (4,), (4, 6) or (6,)."""
    return {"ipv4": (4,), "dual": (4, 6), "ipv6": (6,)}[ip_family]


def wireguard_port(family: int) -> int:
    """The UDP port a lab node's WireGuard device of IP version `family` listens on."""
    return WIREGUARD_PORT6 if family == 6 else WIREGUARD_PORT


def wireguard_device(family: int) -> str:
    """The WireGuard device carrying IP version `family`'s pod packets (Mode separate)."""
    return WIREGUARD_DEVICES[family]


def etcd_host(ip_family: str) -> str:
    """Where etcd listens: the bridge's IPv4 address, or its IPv6 one in an IPv6-only lab."""
    return f"[{gateway_ip6()}]" if ip_family == "ipv6" else str(gateway_ip())


def etcd_endpoint() -> str:
    return f"http://{gateway_ip()}:{ETCD_CLIENT_PORT}"


def lab_dir(state_root: Path, lab: str) -> Path:
    return state_root / lab
