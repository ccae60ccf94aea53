"""`flannelish doctor`: find the classic Flannel node problems and say how to fix each.

Design
------
Two halves with a plain-data seam between them:

* :func:`collect` gathers :class:`NodeFacts` from the running system (``ip -j``,
  ``/proc/sys``, ``nft -j list ruleset``, subnet.env, optionally the leases
  from etcd).  It is the only part that needs root or the kernel, and it
  never changes anything.
* Each check is a pure function ``NodeFacts -> list[Finding]``; unit tests
  build NodeFacts by hand.  A fact that could not be gathered (None) makes
  the checks that need it report an ``info`` finding instead of guessing.

Checks: ``subnet-env`` (missing or unreadable), ``mtu`` (overlay device vs
underlay vs subnet.env vs the CNI bridge), ``sysctl`` (ip_forward,
br_netfilter's bridge-nf-call-iptables), ``firewall`` (would the input hook
drop VXLAN from a peer; would the forward hook drop pod traffic; evaluated
by :mod:`flannelish.node.nft_verdict`), ``leases`` (duplicate PublicIPs or VTEP
MACs, leases not renewed in time or expired, mixed backends, our own lease
missing).
"""

from __future__ import annotations

import enum
import json
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from flannelish.errors import ConfigError, KernelError, NotAvailableError
from flannelish.kernel.nft import NftCli, NftRunner
from flannelish.node.nft_verdict import Packet, input_blocks
from flannelish.subnet.lease import Lease, LeaseDecodeError
from flannelish.subnet_env import SubnetEnv, read_subnet_env

VXLAN_OVERHEAD = 50
DEFAULT_VXLAN_PORT = 8472
SYSCTL_FORWARD = "net.ipv4.ip_forward"
SYSCTL_BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"


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


@dataclass(frozen=True)
class LinkFacts:
    name: str
    mtu: int
    kind: str = ""
    underlay: str | None = None  # vxlan: the `dev` it sends on
    port: int | None = None  # vxlan: dstport
    local: IPv4Address | None = None  # vxlan: local address


@dataclass
class NodeFacts:
    subnet_env_path: str
    subnet_env: SubnetEnv | None = None
    subnet_env_error: str | None = None
    links: dict[str, LinkFacts] | None = None  # None: could not list links
    default_iface: str | None = None
    sysctls: dict[str, str | None] = field(default_factory=dict)  # None value: missing
    ruleset: list[dict[str, Any]] | None = None  # `nft -j list ruleset` items
    ruleset_error: str | None = None
    iptables_legacy: str | None = None  # `iptables-legacy-save -t filter`, if that exists
    leases: list[Lease] | None = None
    leases_error: str | None = None
    etcd_prefix: str = "/coreos.com/network"
    device: str | None = None  # explicit overlay device name
    renew_margin: float = 3600.0  # seconds; a live node renews before this
    now: float = field(default_factory=time.time)

    # -- derived -------------------------------------------------------------

    def overlay(self) -> LinkFacts | None:
        links = self.links or {}
        if self.device:
            return links.get(self.device)
        vx = [x for x in links.values() if x.kind == "vxlan" and x.name.startswith("flannel.")]
        return sorted(vx, key=lambda x: x.name)[0] if vx else None

    def underlay(self) -> LinkFacts | None:
        links = self.links or {}
        dev = self.overlay()
        name = dev.underlay if dev and dev.underlay else self.default_iface
        return links.get(name) if name else None

    def own_subnet(self) -> IPv4Network | None:
        return self.subnet_env.subnet if self.subnet_env else None


# -- checks ---------------------------------------------------------------------


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
    missing = [
        key
        for key, value in (("FLANNEL_NETWORK", env.network), ("FLANNEL_SUBNET", env.subnet))
        if value is None
    ]
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
    if dev is not None:
        limit = ul.mtu - VXLAN_OVERHEAD
        if dev.mtu > limit:
            out.append(
                Finding(
                    Severity.ERROR,
                    "mtu",
                    f"{dev.name} MTU {dev.mtu} exceeds {ul.name} MTU {ul.mtu} - "
                    f"{VXLAN_OVERHEAD} = {limit}: full-size pod packets are dropped once "
                    "encapsulated (small pings work, bulk transfers hang)",
                    f"`ip link set {dev.name} mtu {limit}` and restart the daemon so subnet.env "
                    "agrees; or set Backend.MTU in the network config",
                )
            )
        if env_mtu is not None and env_mtu != dev.mtu:
            out.append(
                Finding(
                    Severity.ERROR,
                    "mtu",
                    f"subnet.env says FLANNEL_MTU={env_mtu} but {dev.name} has MTU {dev.mtu}: "
                    "new pods get the wrong MTU",
                    "restart the daemon so it rewrites subnet.env, then recreate affected pods",
                )
            )
        pod_mtu = min(dev.mtu, limit)
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


def _peer_ips(facts: NodeFacts) -> list[IPv4Address] | None:
    if facts.leases is None:
        return None
    own, dev = facts.own_subnet(), facts.overlay()
    local = dev.local if dev else None
    return sorted(
        {
            lease.attrs.public_ip
            for lease in facts.leases
            if lease.subnet != own and lease.attrs.public_ip != local
        }
    )


def check_firewall(facts: NodeFacts) -> list[Finding]:
    return _check_nft(facts) + check_legacy_iptables(facts)


def _check_nft(facts: NodeFacts) -> list[Finding]:
    if facts.ruleset is None:
        return [
            Finding(
                Severity.INFO,
                "firewall",
                f"nftables ruleset not readable ({facts.ruleset_error or 'nft missing'}); "
                "VXLAN port not checked",
            )
        ]
    out: list[Finding] = []
    dev = facts.overlay()
    if dev is not None:
        port = dev.port or DEFAULT_VXLAN_PORT
        ul = facts.underlay()
        peers = _peer_ips(facts)
        sources: Sequence[IPv4Address | None] = peers if peers else [None]
        seen: set[tuple[str, str, str, str]] = set()
        for src in sources:
            pkt = Packet("udp", port, saddr=src, daddr=dev.local, iifname=ul.name if ul else None)
            for block in input_blocks(facts.ruleset, pkt):
                ours = block.table == "flannelish" and block.family == "ip"
                if ours and src is None:
                    continue  # the anti-spoof rule drops unknown sources on purpose
                key = (block.family, block.table, block.chain, block.rule)
                if key in seen:
                    continue
                seen.add(key)
                who = f"from peer {src}" if src else "from peers"
                if ours:
                    out.append(
                        Finding(
                            Severity.ERROR,
                            "firewall",
                            f"VXLAN (udp/{port}) {who} is dropped by flannelish's own "
                            "anti-spoof rule: the peer is missing from set vxlan_peers",
                            "the daemon re-syncs the set every resync interval; if this "
                            "persists check its log, or run with --vxlan-allow-any",
                        )
                    )
                    continue
                verb = "is dropped" if block.certain else "may be dropped"
                out.append(
                    Finding(
                        Severity.ERROR if block.certain else Severity.WARNING,
                        "firewall",
                        f"VXLAN (udp/{port}) {who} {verb} by {block.where()}: "
                        "the overlay cannot carry pod traffic",
                        f"allow udp dport {port} from the nodes' addresses before that rule, "
                        f"e.g. `nft insert rule {block.family} {block.table} {block.chain} "
                        f"udp dport {port} accept`",
                    )
                )
    env = facts.subnet_env
    if env is not None and env.network is not None and env.subnet is not None:
        # A pod of ours talking to a pod of another node: any other subnet will do.
        inside = env.subnet.network_address + 2
        sibling = env.subnet.supernet() if env.subnet.prefixlen > env.network.prefixlen else None
        others = [s for s in (sibling.subnets() if sibling else []) if s != env.subnet]
        other = others[0].network_address + 2 if others else inside
        pkt = Packet("tcp", 80, saddr=IPv4Address(inside), daddr=IPv4Address(other))
        for block in input_blocks(facts.ruleset, pkt, hook="forward"):
            if block.table == "flannelish":
                continue
            verb = "is dropped" if block.certain else "may be dropped"
            out.append(
                Finding(
                    Severity.ERROR if block.certain else Severity.WARNING,
                    "firewall",
                    f"forwarded pod traffic ({env.network}) {verb} by {block.where()}; "
                    "flannelish's own forward accept cannot override another table's drop",
                    f"accept `ip saddr {env.network}` and `ip daddr {env.network}` in that chain",
                )
            )
    return out


def legacy_input_drops(save: str, port: int) -> list[tuple[str, bool]]:
    """(rule, certain) for iptables-legacy INPUT rules that drop or reject UDP to ``port``.

    These rules are invisible to nft.  Only the filter table's INPUT chain is
    read; a rule with extra conditions (source, interface, other matches)
    "may" drop, and a DROP policy is reported as "may" unless an earlier
    ACCEPT for the port exists.
    """
    out: list[tuple[str, bool]] = []
    policy_drop = False
    in_filter = False
    for line in save.splitlines():
        line = line.strip()
        if line.startswith("*"):
            in_filter = line == "*filter"
        if not in_filter:
            continue
        if line.startswith(":INPUT "):
            policy_drop = line.split()[1] == "DROP"
        if not line.startswith("-A INPUT "):
            continue
        words = line.split()
        target = words[words.index("-j") + 1] if "-j" in words else ""
        proto = words[words.index("-p") + 1] if "-p" in words else "all"
        if proto not in ("udp", "all", "17"):
            continue
        if "--dport" in words:
            spec = words[words.index("--dport") + 1]
            low, _, high = spec.partition(":")
            if not int(low or 0) <= port <= int(high or low or 65535):
                continue
        elif "--dports" in words:
            continue  # multiport lists: not modelled, keep quiet rather than guess
        extra = _extra_conditions(words)
        if target == "ACCEPT" and not extra:
            return out  # accepted before any later drop or the policy
        if target in ("DROP", "REJECT"):
            out.append((line, not extra))
            if not extra:
                return out  # the packet ends here
    if policy_drop:
        out.append((":INPUT DROP (policy)", False))
    return out


# Options that do not narrow "UDP to our port" (value-taking ones skip their value).
_PLAIN_OPTIONS = {"-A": 1, "-p": 1, "-m": 1, "--dport": 1, "-j": 1, "--reject-with": 1}


def _extra_conditions(words: list[str]) -> bool:
    i = 0
    while i < len(words):
        word = words[i]
        if word in _PLAIN_OPTIONS:
            i += 1 + _PLAIN_OPTIONS[word]
            continue
        if word.startswith("-") or word == "!":
            return True  # e.g. -s, -i, -m conntrack --ctstate: only some packets match
        i += 1
    return False


def check_legacy_iptables(facts: NodeFacts) -> list[Finding]:
    dev = facts.overlay()
    if dev is None or not facts.iptables_legacy:
        return []
    port = dev.port or DEFAULT_VXLAN_PORT
    return [
        Finding(
            Severity.ERROR if certain else Severity.WARNING,
            "firewall",
            f"VXLAN (udp/{port}) {'is' if certain else 'may be'} dropped by the iptables-legacy "
            f"rule `{rule}` (invisible to nft)",
            f"allow it first: `iptables-legacy -I INPUT -p udp --dport {port} -j ACCEPT`",
        )
        for rule, certain in legacy_input_drops(facts.iptables_legacy, port)
    ]


def _lease_key(prefix: str, lease: Lease) -> str:
    return f"{prefix}/subnets/{lease.subnet.network_address}-{lease.subnet.prefixlen}"


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
    by_ip: dict[IPv4Address, list[Lease]] = defaultdict(list)
    by_mac: dict[str, list[Lease]] = defaultdict(list)
    types = defaultdict(list)
    for lease in facts.leases:
        by_ip[lease.attrs.public_ip].append(lease)
        types[lease.attrs.backend_type or "none"].append(lease)
        try:
            mac = lease.attrs.vtep_mac
        except LeaseDecodeError:
            mac = None
        if mac:
            by_mac[mac].append(lease)
    for ip, group in sorted(by_ip.items()):
        if len(group) > 1:
            subnets = ", ".join(str(x.subnet) for x in group)
            out.append(
                Finding(
                    Severity.ERROR,
                    "leases",
                    f"PublicIP {ip} is advertised by {len(group)} leases ({subnets}): traffic "
                    "for all of them goes to one node",
                    "give each node its own --public-ip/--iface (e.g. Vagrant's shared NAT "
                    "address), then delete the stale key(s): "
                    + " ".join(f"`etcdctl del {_lease_key(facts.etcd_prefix, x)}`" for x in group),
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
                    f"`etcdctl del {_lease_key(facts.etcd_prefix, lease)}`",
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
                    f"if node {ip} is gone: `etcdctl del {_lease_key(facts.etcd_prefix, lease)}`; "
                    "otherwise check its daemon",
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
    own = facts.own_subnet()
    if own is not None and all(x.subnet != own for x in facts.leases):
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


CHECKS: list[tuple[str, Callable[[NodeFacts], list[Finding]]]] = [
    ("subnet-env", check_subnet_env),
    ("mtu", check_mtu),
    ("sysctl", check_sysctls),
    ("firewall", check_firewall),
    ("leases", check_leases),
]


@dataclass
class Report:
    results: list[tuple[str, list[Finding]]]

    @property
    def findings(self) -> list[Finding]:
        return [f for _, group in self.results for f in group]

    @property
    def ok(self) -> bool:
        return not any(f.severity is Severity.ERROR for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [
                {"name": name, "findings": [f.to_dict() for f in group]}
                for name, group in self.results
            ],
        }


def run_checks(facts: NodeFacts) -> Report:
    return Report([(name, check(facts)) for name, check in CHECKS])


# -- collecting facts from the running system ----------------------------------


def _run(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def parse_links(doc: list[dict[str, Any]]) -> dict[str, LinkFacts]:
    """`ip -j -d link show` output -> LinkFacts by name."""
    links = {}
    for item in doc:
        info = item.get("linkinfo") or {}
        data = info.get("info_data") or {}
        kind = info.get("info_kind", "")
        local = data.get("local") if kind == "vxlan" else None
        links[item["ifname"]] = LinkFacts(
            name=item["ifname"],
            mtu=int(item.get("mtu", 0)),
            kind=kind,
            underlay=data.get("link") if kind == "vxlan" else None,
            port=int(data["port"]) if kind == "vxlan" and data.get("port") else None,
            local=IPv4Address(local) if local and ":" not in local else None,
        )
    return links


def read_sysctl(name: str, root: Path = Path("/proc/sys")) -> str | None:
    try:
        return (root / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def collect(
    subnet_file: str | Path,
    *,
    device: str | None = None,
    leases: Callable[[], list[Lease]] | None = None,
    etcd_prefix: str = "/coreos.com/network",
    renew_margin: float = 3600.0,
    nft: NftRunner | None = None,
) -> NodeFacts:
    """Gather facts from this network namespace (read-only)."""
    facts = NodeFacts(
        str(subnet_file), device=device, etcd_prefix=etcd_prefix, renew_margin=renew_margin
    )
    try:
        facts.subnet_env = read_subnet_env(subnet_file)
    except ConfigError as exc:
        facts.subnet_env_error = str(exc)
    try:
        result = _run(["ip", "-j", "-d", "link", "show"])
        if result.returncode == 0:
            facts.links = parse_links(json.loads(result.stdout))
        result = _run(["ip", "-j", "route", "show", "default"])
        if result.returncode == 0:
            routes = json.loads(result.stdout or "[]")
            facts.default_iface = routes[0].get("dev") if routes else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        facts.links = None
    facts.sysctls = {name: read_sysctl(name) for name in (SYSCTL_FORWARD, SYSCTL_BRIDGE_NF)}
    try:
        facts.ruleset = (nft or NftCli()).listing("ruleset") or []
    except KernelError as exc:
        facts.ruleset_error = exc.details or exc.msg
    except (NotAvailableError, OSError, subprocess.TimeoutExpired) as exc:
        facts.ruleset_error = str(exc)
    if shutil.which("iptables-legacy-save"):
        try:
            result = _run(["iptables-legacy-save", "-t", "filter"])
            facts.iptables_legacy = result.stdout if result.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            facts.iptables_legacy = None
    if leases is not None:
        try:
            facts.leases = leases()
        except Exception as exc:  # any etcd failure only disables the lease checks
            facts.leases_error = f"etcd: {exc}"
    return facts
