"""The doctor's checks that need no firewall model: ``NodeFacts -> list[Finding]``.

``subnet-env`` (missing or unreadable), ``mtu`` (overlay device vs underlay
vs subnet.env vs the CNI bridge), ``sysctl`` (ip_forward, br_netfilter's
bridge-nf-call-iptables) and ``leases`` (duplicate PublicIPs or VTEP MACs,
leases not renewed in time or expired, mixed backends, our own lease
missing).  The firewall check is in flannelish.node.firewall_checks; all of
them are pure functions of the facts, run by flannelish.node.doctor.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannelish.node.facts import SYSCTL_BRIDGE_NF, SYSCTL_FORWARD, NodeFacts
from flannelish.subnet.keys import Keys
from flannelish.subnet.lease import Lease, LeaseDecodeError

VXLAN_OVERHEAD = 50
VXLAN_OVERHEAD_V6 = 70  # the tunnel over IPv6: outer header 40, not 20


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    check: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity.value,
            "check": self.check,
            "message": self.message,
            "fix": self.fix,
        }


def check_subnet_env(facts: NodeFacts) -> list[Finding]:
    path = facts.subnet_env_path
    if facts.subnet_env_error:
        return [
            Finding(
                Severity.ERROR,
                "subnet-env",
                f"{path} is unreadable: {facts.subnet_env_error}",
                "stop the daemon, delete the file and start the daemon again; it rewrites it",
            )
        ]
    if facts.subnet_env is None:
        return [
            Finding(
                Severity.ERROR,
                "subnet-env",
                f"{path} does not exist: the CNI plugin fails every pod with ENOENT",
                "start `flannelish daemon` (same --subnet-file) and check its log; the file is "
                "written once the lease and the overlay device are ready",
            )
        ]
    env = facts.subnet_env
    # Each family the file carries needs its network and subnet; an IPv6-only node's
    # file has only the IPv6 pair (docs/flannel-compat.md), a dual-stack one both.
    pairs = [
        (("FLANNEL_NETWORK", env.network), ("FLANNEL_SUBNET", env.subnet)),
        (("FLANNEL_IPV6_NETWORK", env.ipv6_network), ("FLANNEL_IPV6_SUBNET", env.ipv6_subnet)),
    ]
    present = [pair for pair in pairs if any(value is not None for _, value in pair)]
    missing = [key for pair in present or pairs[:1] for key, value in pair if value is None]
    if missing or env.mtu <= 0:
        what = ", ".join(missing + ([] if env.mtu > 0 else ["FLANNEL_MTU"]))
        return [
            Finding(
                Severity.ERROR,
                "subnet-env",
                f"{path} lacks {what}",
                "restart the daemon so it rewrites the file",
            )
        ]
    return []


def check_mtu(facts: NodeFacts) -> list[Finding]:
    if facts.links is None:
        return [Finding(Severity.INFO, "mtu", "links could not be listed; MTU not checked")]
    out: list[Finding] = []
    dev, ul = facts.overlay(), facts.underlay()
    env_mtu = facts.subnet_env.mtu if facts.subnet_env else None
    if ul is None:
        out.append(
            Finding(
                Severity.WARNING,
                "mtu",
                "no underlay interface found (no overlay device and no default route)",
                "pass --device, or check that the node has a default route",
            )
        )
        return out
    devices = [
        (d, ul.mtu - overhead, overhead)
        for d, overhead in ((dev, VXLAN_OVERHEAD), (facts.overlay6(), VXLAN_OVERHEAD_V6))
        if d is not None
    ]
    for d, limit, overhead in devices:
        if d.mtu > limit:
            out.append(
                Finding(
                    Severity.ERROR,
                    "mtu",
                    f"{d.name} MTU {d.mtu} exceeds {ul.name} MTU {ul.mtu} - "
                    f"{overhead} = {limit}: full-size pod packets are dropped once "
                    "encapsulated (small pings work, bulk transfers hang)",
                    f"`ip link set {d.name} mtu {limit}` and restart the daemon so subnet.env "
                    "agrees; or set Backend.MTU in the network config",
                )
            )
    if devices:
        # Pods get one MTU for both families: the smaller tunnel's.
        smallest = min((x[0] for x in devices), key=lambda d: d.mtu)
        if env_mtu is not None and env_mtu != smallest.mtu:
            out.append(
                Finding(
                    Severity.ERROR,
                    "mtu",
                    f"subnet.env says FLANNEL_MTU={env_mtu} but {smallest.name} has MTU "
                    f"{smallest.mtu}: new pods get the wrong MTU",
                    "restart the daemon so it rewrites subnet.env, then recreate affected pods",
                )
            )
        pod_mtu = min(min(d.mtu, limit) for d, limit, _ in devices)
    else:
        pod_mtu = ul.mtu  # host-gw: pods use the underlay MTU
        if env_mtu is not None and env_mtu > ul.mtu:
            out.append(
                Finding(
                    Severity.ERROR,
                    "mtu",
                    f"subnet.env FLANNEL_MTU={env_mtu} exceeds {ul.name} MTU {ul.mtu}",
                    "restart the daemon so it rewrites subnet.env with the interface MTU",
                )
            )
    bridge = (facts.links or {}).get("cni0")
    if bridge is not None and env_mtu is not None and bridge.mtu > min(env_mtu, pod_mtu):
        out.append(
            Finding(
                Severity.WARNING,
                "mtu",
                f"cni0 MTU {bridge.mtu} is larger than the pod MTU {min(env_mtu, pod_mtu)}",
                f"`ip link set cni0 mtu {min(env_mtu, pod_mtu)}` (pods created before an MTU "
                "change keep their old MTU until recreated)",
            )
        )
    return out


def check_sysctls(facts: NodeFacts) -> list[Finding]:
    out = []
    forward = facts.sysctls.get(SYSCTL_FORWARD)
    if forward != "1":
        out.append(
            Finding(
                Severity.ERROR,
                "sysctl",
                f"{SYSCTL_FORWARD} is {forward or 'unreadable'}: the node does not route pod "
                "traffic between the bridge and the overlay",
                f"sysctl -w {SYSCTL_FORWARD}=1 (and persist it in /etc/sysctl.d/)",
            )
        )
    bridge_nf = facts.sysctls.get(SYSCTL_BRIDGE_NF)
    if bridge_nf is None:
        out.append(
            Finding(
                Severity.WARNING,
                "sysctl",
                "br_netfilter is not loaded: kube-proxy's rules never see pod-to-service "
                "traffic that stays on the cni0 bridge",
                "modprobe br_netfilter; echo br_netfilter > /etc/modules-load.d/br_netfilter.conf",
            )
        )
    elif bridge_nf != "1":
        out.append(
            Finding(
                Severity.WARNING,
                "sysctl",
                f"{SYSCTL_BRIDGE_NF} is {bridge_nf}: bridged pod traffic bypasses iptables/nft",
                f"sysctl -w {SYSCTL_BRIDGE_NF}=1",
            )
        )
    return out


def check_leases(facts: NodeFacts) -> list[Finding]:
    if facts.leases is None and facts.leases_error:
        return [
            Finding(
                Severity.WARNING,
                "leases",
                f"lease checks skipped, cannot read the leases: {facts.leases_error}",
                "check --etcd-endpoints (and the TLS/auth flags) against the daemon's; "
                "a node that cannot reach etcd keeps its data path but loses its lease",
            )
        ]
    if facts.leases is None:
        return [Finding(Severity.INFO, "leases", "lease checks skipped: etcd not consulted")]
    out: list[Finding] = []
    keys = Keys(facts.etcd_prefix)

    def key(lease: Lease) -> str:  # for the `etcdctl del` an operator may run
        return keys.subnet(lease.subnet, lease.ipv6_subnet)

    by_ip: dict[IPv4Address | IPv6Address, list[Lease]] = defaultdict(list)
    by_mac: dict[str, list[Lease]] = defaultdict(list)
    types = defaultdict(list)
    for lease in facts.leases:
        if not lease.attrs.public_ip.is_unspecified:  # 0.0.0.0: an IPv6-only lease
            by_ip[lease.attrs.public_ip].append(lease)
        if lease.attrs.public_ipv6 is not None:
            by_ip[lease.attrs.public_ipv6].append(lease)
        types[lease.attrs.backend_type or "none"].append(lease)
        try:
            mac = lease.attrs.vtep_mac
        except LeaseDecodeError:
            mac = None
        if mac:
            by_mac[mac].append(lease)
    for ip, group in sorted(by_ip.items(), key=lambda item: (item[0].version, item[0])):
        if len(group) > 1:
            subnets = ", ".join(str(_subnet_of(x)) for x in group)
            out.append(
                Finding(
                    Severity.ERROR,
                    "leases",
                    f"{'PublicIPv6' if ip.version == 6 else 'PublicIP'} {ip} is advertised by "
                    f"{len(group)} leases ({subnets}): traffic "
                    "for all of them goes to one node",
                    "give each node its own --public-ip/--iface (e.g. Vagrant's shared NAT "
                    "address), then delete the stale key(s): "
                    + " ".join(f"`etcdctl del {key(x)}`" for x in group),
                )
            )
    for mac, group in sorted(by_mac.items()):
        if len(group) > 1:
            subnets = ", ".join(str(x.subnet) for x in group)
            out.append(
                Finding(
                    Severity.ERROR,
                    "leases",
                    f"VTEP MAC {mac} is used by {len(group)} leases ({subnets}): peers' FDB "
                    "sends both subnets' traffic to one node",
                    "nodes were cloned with the same VTEP MAC file: delete "
                    "<subnet-file dir>/flannel.<VNI>.vtep-mac on one of them and restart it",
                )
            )
    slack = 120.0  # renewals are not instantaneous
    for lease in facts.leases:
        if lease.expiration is None:
            continue
        left = lease.expiration - facts.now
        ip = lease.attrs.public_ip
        if left <= 0:
            out.append(
                Finding(
                    Severity.ERROR,
                    "leases",
                    f"lease {lease.subnet} ({ip}) expired {int(-left)} s ago but is still in etcd",
                    f"`etcdctl del {key(lease)}`",
                )
            )
        elif left < facts.renew_margin - slack:
            out.append(
                Finding(
                    Severity.WARNING,
                    "leases",
                    f"lease {lease.subnet} ({ip}) was not renewed in time (expires in "
                    f"{int(left // 60)} min): its node is probably gone and the subnet is "
                    "held until then",
                    f"if node {ip} is gone: `etcdctl del {key(lease)}`; otherwise check its daemon",
                )
            )
    if len(types) > 1:
        summary = ", ".join(f"{t}: {len(group)}" for t, group in sorted(types.items()))
        out.append(
            Finding(
                Severity.WARNING,
                "leases",
                f"nodes use different backends ({summary}); they cannot reach each other's pods",
                "use one Backend.Type for the whole network and restart the odd nodes",
            )
        )
    own: IPv4Network | IPv6Network | None = facts.own_subnet()
    held: list[IPv4Network | IPv6Network | None] = [x.subnet for x in facts.leases]
    if own is None and facts.subnet_env is not None:  # an IPv6-only node: its IPv6 subnet
        own, held = facts.subnet_env.ipv6_subnet, [x.ipv6_subnet for x in facts.leases]
    if own is not None and own not in held:
        out.append(
            Finding(
                Severity.ERROR,
                "leases",
                f"this node's subnet {own} (from subnet.env) has no lease in etcd: peers do "
                "not route to it",
                "check the daemon's log for lease errors; a running daemon re-acquires it",
            )
        )
    return out


def _subnet_of(lease: Lease) -> IPv4Network | IPv6Network:
    """The lease's IPv4 subnet, or its IPv6 one for an IPv6-only lease (0.0.0.0/0)."""
    if lease.subnet.prefixlen == 0 and lease.ipv6_subnet is not None:
        return lease.ipv6_subnet
    return lease.subnet
