"""What crossed the underlay, judged: a pure function over captured frames.

`analyze(frames, expected)` decodes every Ethernet frame captured on the
underlay bridge and returns one verdict per assertion.  It does no I/O, so
unit tests feed it crafted scapy packets, good and bad, without root.

VXLAN is recognised by its header (the I flag and an inner Ethernet frame),
not by the UDP port, so traffic on a *wrong* port is still seen as VXLAN and
reported as such instead of silently falling into "other traffic".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

IPAddress = IPv4Address | IPv6Address

PASS, FAIL, SKIP = "pass", "FAIL", "skip"
_PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp"}  # 58: ICMPv6
_IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_ETHERTYPES = (0x0800, 0x86DD)
VXLAN_HEADER = 8
ETHER_HEADER = 14
MAX_EXAMPLES = 3


@dataclass(frozen=True)
class Flow:
    """Directional pod-to-pod traffic of one protocol."""

    src: IPAddress
    dst: IPAddress
    proto: str

    def __str__(self) -> str:
        return f"{self.proto} {self.src}->{self.dst}"


@dataclass(frozen=True)
class Expected:
    backend: str
    pod_network: IPv4Network | IPv6Network
    vni: int
    port: int
    overlay_mtu: int
    underlay_mtu: int
    node_subnets: Mapping[IPAddress, IPv4Network | IPv6Network]  # public IP -> pod subnet
    pod_ips: frozenset[IPAddress]
    cross_node: frozenset[Flow]
    same_node: frozenset[Flow]

    @property
    def family(self) -> int:
        """The IP version checked: the pod network's (VXLAN runs over the same family)."""
        return self.pod_network.version

    def owner(self, pod_ip: IPAddress) -> IPAddress | None:
        for public_ip, subnet in self.node_subnets.items():
            if pod_ip in subnet:
                return public_ip
        return None


@dataclass(frozen=True)
class Seen:
    """One IPv4 or IPv6 frame on the underlay, decoded."""

    outer_src: IPAddress
    outer_dst: IPAddress
    outer_len: int
    fragment: bool
    encapsulated: bool = False
    dport: int | None = None
    vni: int | None = None
    inner_src: IPAddress | None = None
    inner_dst: IPAddress | None = None
    inner_len: int = 0
    inner_fragment: bool = False
    proto: str = "other"

    @property
    def pod_src(self) -> IPAddress:
        return self.inner_src if self.encapsulated and self.inner_src else self.outer_src

    @property
    def pod_dst(self) -> IPAddress:
        return self.inner_dst if self.encapsulated and self.inner_dst else self.outer_dst

    def describe(self) -> str:
        outer = f"{self.outer_src}->{self.outer_dst}"
        if self.encapsulated:
            inner = f"{self.proto} {self.inner_src}->{self.inner_dst}"
            return f"{outer} udp/{self.dport} vni {self.vni} [{inner}]"
        return f"{self.proto} {outer}"


@dataclass
class Verdict:
    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass
class Analysis:
    verdicts: list[Verdict] = field(default_factory=list)
    frames: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not any(v.failed for v in self.verdicts)

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.failed]


def _ip_header(raw: bytes) -> tuple[IPAddress, IPAddress, int, int, bool, int] | None:
    """(src, dst, proto, total length, is fragment, header length) of an IPv4 or IPv6
    packet (IPv6: proto after the extension headers, which count as header)."""
    if len(raw) >= 40 and raw[0] >> 4 == 6:
        return _ipv6_header(raw)
    if len(raw) < 20 or raw[0] >> 4 != 4:
        return None
    ihl = (raw[0] & 0x0F) * 4
    total = int.from_bytes(raw[2:4], "big")
    flags_frag = int.from_bytes(raw[6:8], "big")
    fragment = bool(flags_frag & 0x2000) or (flags_frag & 0x1FFF) != 0
    return IPv4Address(raw[12:16]), IPv4Address(raw[16:20]), raw[9], total, fragment, ihl


def _ipv6_header(raw: bytes) -> tuple[IPAddress, IPAddress, int, int, bool, int] | None:
    total = 40 + int.from_bytes(raw[4:6], "big")
    proto, offset, fragment = raw[6], 40, False
    while proto in (*_IPV6_EXTENSIONS, _IPV6_FRAGMENT):
        if len(raw) < offset + 8:
            return None
        if proto == _IPV6_FRAGMENT:
            fragment, size = True, 8
        else:
            size = (raw[offset + 1] + 1) * 8
        proto, offset = raw[offset], offset + size
    return IPv6Address(raw[8:24]), IPv6Address(raw[24:40]), proto, total, fragment, offset


def _ethertype_payload(frame: bytes) -> tuple[int, bytes]:
    """Ethertype and payload, looking through 802.1Q tags."""
    offset, ethertype = 12, int.from_bytes(frame[12:14], "big")
    while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 6:
        offset += 4
        ethertype = int.from_bytes(frame[offset : offset + 2], "big")
    return ethertype, frame[offset + 2 :]


def decode(frame: bytes) -> Seen | None:
    """Decode one captured Ethernet frame; None unless it carries IPv4 or IPv6."""
    if len(frame) < ETHER_HEADER:
        return None
    ethertype, payload = _ethertype_payload(frame)
    outer = _ip_header(payload) if ethertype in _ETHERTYPES else None
    if outer is None:
        return None
    src, dst, proto, total, fragment, ihl = outer
    seen = Seen(src, dst, total, fragment, proto=_PROTOS.get(proto, str(proto)))
    if proto != 17 or fragment:
        return seen
    udp = payload[ihl:]
    vxlan = udp[8:]
    if len(udp) < 8 or len(vxlan) < VXLAN_HEADER + ETHER_HEADER or not vxlan[0] & 0x08:
        return seen
    inner_type, inner_payload = _ethertype_payload(vxlan[VXLAN_HEADER:])
    inner = _ip_header(inner_payload) if inner_type in _ETHERTYPES else None
    if inner is None:
        return seen
    i_src, i_dst, i_proto, i_total, i_frag, _ = inner
    return Seen(
        src, dst, total, fragment,
        encapsulated=True,
        dport=int.from_bytes(udp[2:4], "big"),
        vni=int.from_bytes(vxlan[4:7], "big"),
        inner_src=i_src, inner_dst=i_dst, inner_len=i_total, inner_fragment=i_frag,
        proto=_PROTOS.get(i_proto, str(i_proto)),
    )  # fmt: skip


def _frame_bytes(frame: Any) -> bytes:
    return bytes(frame)


def _examples(items: Iterable[Any]) -> str:
    items = list(items)
    shown = "; ".join(str(i) for i in items[:MAX_EXAMPLES])
    more = f" (+{len(items) - MAX_EXAMPLES} more)" if len(items) > MAX_EXAMPLES else ""
    return shown + more


def analyze(frames: Iterable[Any], expected: Expected) -> Analysis:
    """Verdicts over captured frames (scapy packets or raw bytes)."""
    result = Analysis()
    pod_net = expected.pod_network
    pod: list[Seen] = []
    fragments: list[Seen] = []
    raw: list[tuple[Seen, bytes, int]] = []  # (frame, bytes, WireGuard message type or 0)
    for frame in frames:
        result.frames += 1
        data = _frame_bytes(frame)
        seen = decode(data)
        if seen is None:
            result.counts["non-ip"] += 1
            continue
        wg = _wireguard_type(data, expected.port) if expected.backend == "wireguard" else 0
        if expected.backend == "wireguard":
            raw.append((seen, data, wg))
        if seen.fragment or seen.inner_fragment:
            fragments.append(seen)
        if seen.pod_src in pod_net or seen.pod_dst in pod_net:
            pod.append(seen)
            result.counts["vxlan" if seen.encapsulated else "pod-unencapsulated"] += 1
        elif wg:
            result.counts["wireguard"] += 1
        else:
            result.counts["underlay"] += 1

    encap = [s for s in pod if s.encapsulated]
    plain = [s for s in pod if not s.encapsulated]
    if expected.backend == "wireguard":
        result.verdicts = _WireguardChecks(expected, encap, plain, fragments, raw).run()
        return result
    check = _VxlanChecks if expected.backend == "vxlan" else _HostGwChecks
    result.verdicts = check(expected, encap, plain, fragments).run()
    return result


def analyze_by_family(frames: Sequence[Any], expected: Sequence[Expected]) -> Analysis:
    """One analysis per family over the same capture (one Expected per family).  IPv4
    alone is `analyze`; otherwise (dual-stack, IPv6 only) every verdict names its
    family ("IPv6: VNI 1 on every VXLAN packet") and the counts are summed."""
    if [e.family for e in expected] == [4]:
        return analyze(frames, expected[0])
    merged = Analysis(frames=len(frames))
    for e in expected:
        part = analyze(frames, e)
        for v in part.verdicts:
            merged.verdicts.append(Verdict(f"IPv{e.family}: {v.name}", v.status, v.detail))
        for key in ("vxlan", "pod-unencapsulated", "wireguard"):
            merged.counts[key] += part.counts[key]
        merged.counts["non-ip"] = part.counts["non-ip"]
    merged.counts["underlay"] = merged.frames - sum(merged.counts.values())
    return merged


def _flows(seen: Iterable[Seen]) -> set[Flow]:
    return {Flow(s.pod_src, s.pod_dst, s.proto) for s in seen}


def _same_node_leaks(expected: Expected, pod: list[Seen]) -> Verdict:
    name = "same-node pod traffic never reaches the underlay"
    if not expected.same_node:
        return Verdict(name, SKIP, "no same-node pod pairs in this lab")
    pairs = {frozenset((f.src, f.dst)) for f in expected.same_node}
    leaks = [s for s in pod if frozenset((s.pod_src, s.pod_dst)) in pairs]
    if leaks:
        return Verdict(
            name, FAIL, f"{len(leaks)} packets seen: {_examples(s.describe() for s in leaks)}"
        )
    return Verdict(name, PASS, f"0 packets of {len(expected.same_node)} same-node flows")


def _fragments(fragments: list[Seen]) -> Verdict:
    name = "nothing is fragmented (outer or inner)"
    if fragments:
        return Verdict(
            name, FAIL, f"{len(fragments)} fragments: {_examples(s.describe() for s in fragments)}"
        )
    return Verdict(name, PASS, "no fragments")


def _missing(expected: frozenset[Flow], observed: set[Flow], name: str) -> Verdict:
    if not expected:
        return Verdict(
            name, FAIL, "no cross-node traffic was generated (fewer than two nodes with pods?)"
        )
    missing = sorted(expected - observed, key=str)
    protos = ", ".join(sorted({f.proto for f in expected}))
    if missing:
        return Verdict(
            name, FAIL, f"{len(missing)} of {len(expected)} flows not seen: {_examples(missing)}"
        )
    return Verdict(name, PASS, f"{len(expected)}/{len(expected)} flows ({protos}), both directions")


class _VxlanChecks:
    def __init__(self, expected: Expected, encap: list[Seen], plain: list[Seen], frags: list[Seen]):
        self.e, self.encap, self.plain, self.frags = expected, encap, plain, frags

    def run(self) -> list[Verdict]:
        e = self.e
        return [
            _missing(
                e.cross_node, _flows(self.encap), "every cross-node pod flow crossed inside VXLAN"
            ),
            self._port(),
            self._vni(),
            self._outer(),
            self._inner(),
            self._mtu(),
            _fragments(self.frags),
            self._unencapsulated(),
            _same_node_leaks(e, self.encap + self.plain),
        ]

    def _port(self) -> Verdict:
        """The port, and the outer family: Flannel carries each family over its own
        (flannel.N over IPv4, flannel-v6.N over IPv6)."""
        name = f"VXLAN on UDP port {self.e.port}"
        family = self.e.family
        bad = [s for s in self.encap if s.dport != self.e.port]
        if bad:
            ports = ", ".join(str(p) for p in sorted({s.dport or 0 for s in bad}))
            return Verdict(name, FAIL, f"{len(bad)} packets to port {ports}")
        wrong = [s for s in self.encap if s.outer_src.version != family]
        if wrong:
            return Verdict(
                name,
                FAIL,
                f"{len(wrong)} packets not over IPv{family}: "
                f"{_examples(s.describe() for s in wrong)}",
            )
        over = f" over IPv{family}" if family == 6 else ""
        return Verdict(
            name, PASS, f"{len(self.encap)} VXLAN packets{over}, all to udp/{self.e.port}"
        )

    def _vni(self) -> Verdict:
        name = f"VNI {self.e.vni} on every VXLAN packet"
        bad = [s for s in self.encap if s.vni != self.e.vni]
        if bad:
            vnis = ", ".join(str(v) for v in sorted({s.vni or 0 for s in bad}))
            return Verdict(name, FAIL, f"{len(bad)} packets with VNI {vnis}")
        return Verdict(name, PASS, f"{len(self.encap)} packets")

    def _outer(self) -> Verdict:
        name = "outer src/dst are the nodes' public IPs"
        bad = []
        for s in self.encap:
            assert s.inner_src is not None and s.inner_dst is not None
            want = (self.e.owner(s.inner_src), self.e.owner(s.inner_dst))
            if (s.outer_src, s.outer_dst) != want:
                bad.append(f"{s.describe()} (expected outer {want[0]}->{want[1]})")
        if bad:
            return Verdict(name, FAIL, f"{len(bad)} packets: {_examples(bad)}")
        used = sorted(
            {str(s.outer_src) for s in self.encap} | {str(s.outer_dst) for s in self.encap}
        )
        return Verdict(name, PASS, f"outer addresses {', '.join(used) or 'none'}")

    def _inner(self) -> Verdict:
        name = "inner src/dst are the pod IPs, unchanged (no NAT)"
        bad = [
            s
            for s in self.encap
            if s.inner_src not in self.e.pod_ips or s.inner_dst not in self.e.pod_ips
        ]
        if bad:
            return Verdict(
                name, FAIL, f"{len(bad)} packets: {_examples(s.describe() for s in bad)}"
            )
        return Verdict(name, PASS, f"{len(_flows(self.encap))} distinct flows, all pod-to-pod")

    def _mtu(self) -> Verdict:
        name = f"inner packets fit the overlay MTU ({self.e.overlay_mtu})"
        largest = max((s.inner_len for s in self.encap), default=0)
        bad = [s for s in self.encap if s.inner_len > self.e.overlay_mtu]
        too_big_outer = [s for s in self.encap if s.outer_len > self.e.underlay_mtu]
        if bad or too_big_outer:
            return Verdict(
                name,
                FAIL,
                f"largest inner packet {largest} B, {len(bad) + len(too_big_outer)} too big",
            )
        return Verdict(name, PASS, f"largest inner packet {largest} B")

    def _unencapsulated(self) -> Verdict:
        name = "no pod-network packet crosses the underlay unencapsulated"
        if self.plain:
            return Verdict(
                name,
                FAIL,
                f"{len(self.plain)} packets: {_examples(s.describe() for s in self.plain)}",
            )
        return Verdict(name, PASS, "0 packets")


class _HostGwChecks(_VxlanChecks):
    """host-gw: pod packets are routed natively between nodes, never encapsulated."""

    def run(self) -> list[Verdict]:
        e = self.e
        return [
            _missing(e.cross_node, _flows(self.plain), "every cross-node pod flow routed natively"),
            self._no_vxlan(),
            self._plain_ips(),
            self._plain_mtu(),
            _fragments(self.frags),
            _same_node_leaks(e, self.encap + self.plain),
        ]

    def _no_vxlan(self) -> Verdict:
        name = "no VXLAN on the underlay"
        if self.encap:
            return Verdict(
                name,
                FAIL,
                f"{len(self.encap)} VXLAN packets: {_examples(s.describe() for s in self.encap)}",
            )
        return Verdict(name, PASS, "0 packets")

    def _plain_ips(self) -> Verdict:
        name = "src/dst are the pod IPs, unchanged (no NAT)"
        bad = [
            s
            for s in self.plain
            if s.outer_src not in self.e.pod_ips or s.outer_dst not in self.e.pod_ips
        ]
        if bad:
            return Verdict(
                name, FAIL, f"{len(bad)} packets: {_examples(s.describe() for s in bad)}"
            )
        return Verdict(name, PASS, f"{len(_flows(self.plain))} distinct flows, all pod-to-pod")

    def _plain_mtu(self) -> Verdict:
        name = f"packets fit the underlay MTU ({self.e.underlay_mtu})"
        largest = max((s.outer_len for s in self.plain), default=0)
        if largest > self.e.underlay_mtu:
            return Verdict(name, FAIL, f"largest packet {largest} B")
        return Verdict(name, PASS, f"largest packet {largest} B")


# -- WireGuard ----------------------------------------------------------------------------

# message type -> its length on the wire (0: variable, data)
_WG_SIZES = {1: 148, 2: 92, 3: 64, 4: 0}
ICMP_PATTERN = bytes(range(0x10, 0x28))  # the start of ping's default payload
PROBE_PATTERN = b"x" * 24  # flannelish.lab.probe's TCP/UDP payload


def _udp_ports(frame: bytes) -> tuple[int, int, bytes] | None:
    """(source port, destination port, payload) of a UDP datagram over IPv4 or IPv6."""
    ethertype, payload = _ethertype_payload(frame)
    outer = _ip_header(payload) if ethertype in _ETHERTYPES else None
    if outer is None or outer[2] != 17 or outer[4]:
        return None
    udp = payload[outer[5] :]
    if len(udp) < 8:
        return None
    return int.from_bytes(udp[0:2], "big"), int.from_bytes(udp[2:4], "big"), udp[8:]


def _wireguard_type(frame: bytes, port: int) -> int:
    """The WireGuard message type of a UDP frame to or from `port`, else 0."""
    ports = _udp_ports(frame)
    if ports is None or port not in ports[:2]:
        return 0
    body = ports[2]
    if len(body) < 4 or body[1:4] != b"\0\0\0" or body[0] not in _WG_SIZES:
        return 0
    size = _WG_SIZES[body[0]]
    if size and len(body) != size:
        return 0
    if body[0] == 4 and len(body) < 32:
        return 0  # data: 16-byte header + ciphertext (padded to 16, up to the MTU) + 16-byte tag
    return body[0]


def _neighbour_discovery(frame: bytes) -> bool:
    """An ICMPv6 neighbour discovery message (router/neighbour solicitation and
    advertisement, redirect): the IPv6 underlay's own housekeeping, as ARP is IPv4's."""
    ethertype, payload = _ethertype_payload(frame)
    outer = _ip_header(payload) if ethertype == 0x86DD else None
    if outer is None or outer[2] != 58 or outer[4] or len(payload) <= outer[5]:
        return False
    return payload[outer[5]] in range(133, 138)


class _WireguardChecks:
    def __init__(
        self,
        expected: Expected,
        encap: list[Seen],
        plain: list[Seen],
        frags: list[Seen],
        raw: list[tuple[Seen, bytes, int]],
    ) -> None:
        self.e, self.encap, self.plain, self.frags, self.raw = expected, encap, plain, frags, raw
        self.nodes = set(expected.node_subnets)

    def run(self) -> list[Verdict]:
        return [
            self._pairs(),
            self._only_wireguard(),
            self._opaque(),
            self._mtu(),
            _fragments(self.frags),
            _same_node_leaks(self.e, self.encap + self.plain),
        ]

    def _pairs(self) -> Verdict:
        name = "every cross-node pod pair's nodes exchanged WireGuard data both ways"
        want = set()
        for f in self.e.cross_node:
            a, b = self.e.owner(f.src), self.e.owner(f.dst)
            if a and b and a != b:
                want.add((a, b))
        if not want:
            return Verdict(name, FAIL, "no cross-node traffic was generated")
        seen = {(s.outer_src, s.outer_dst) for s, _r, wg in self.raw if wg == 4}
        missing = sorted(f"{a}->{b}" for a, b in want - seen)
        if missing:
            return Verdict(name, FAIL, f"no WireGuard data for {_examples(missing)}")
        data = sum(1 for _s, _r, wg in self.raw if wg == 4)
        return Verdict(name, PASS, f"{len(want)} node pairs, {data} data packets")

    def _only_wireguard(self) -> Verdict:
        """Between the nodes' addresses of the family, only WireGuard to and from the
        family's port (flannel-wg's ListenPort, flannel-wg-v6's ListenPortV6); WireGuard
        anywhere else (another family's addresses, another host) is wrong."""
        family = self.e.family
        name = f"pod traffic crosses only as WireGuard udp/{self.e.port} between node IPs"
        bad = [s.describe() for s in self.plain]
        for s, data, wg in self.raw:
            between = s.outer_src in self.nodes and s.outer_dst in self.nodes
            if wg and not between:
                bad.append(
                    f"WireGuard {s.outer_src}->{s.outer_dst} not between the nodes' "
                    f"IPv{family} addresses"
                )
            elif between and not wg and not _neighbour_discovery(data):
                ports = _udp_ports(data)
                what = f"udp {ports[0]}->{ports[1]}" if ports else s.proto
                bad.append(f"{what} {s.outer_src}->{s.outer_dst} (not WireGuard)")
            elif wg:
                ports = _udp_ports(data)
                if ports is None or ports[:2] != (self.e.port, self.e.port):
                    bad.append(
                        f"WireGuard {s.outer_src}->{s.outer_dst} on ports {ports and ports[:2]}"
                    )
        if bad:
            return Verdict(name, FAIL, f"{len(bad)} frames: {_examples(bad)}")
        count = sum(1 for _s, _r, wg in self.raw if wg)
        over = f" over IPv{family}" if family == 6 else ""
        return Verdict(name, PASS, f"{count} WireGuard packets{over}, 0 plaintext pod packets")

    def _opaque(self) -> Verdict:
        """Any frame holding one of the family's pod addresses, and any frame of the
        family holding a known payload (the payloads are the same in both families:
        in a dual-stack lab, an IPv6 frame's readable ping is IPv6's finding)."""
        name = "no inner pod address or payload is readable in any underlay frame"
        addresses = [ip.packed for ip in self.e.pod_ips]
        payloads = [ICMP_PATTERN, PROBE_PATTERN]
        bad = []
        for s, data, _wg in self.raw:
            mine = s.outer_src.version == self.e.family
            if any(a in data for a in addresses) or (mine and any(p in data for p in payloads)):
                bad.append(s.describe())
        if bad:
            return Verdict(name, FAIL, f"{len(bad)} frames: {_examples(bad)}")
        return Verdict(
            name,
            PASS,
            f"{len(self.raw)} frames searched for {len(self.e.pod_ips)} pod IPs and payloads",
        )

    def _mtu(self) -> Verdict:
        name = f"WireGuard packets fit the underlay MTU ({self.e.underlay_mtu})"
        largest = max((s.outer_len for s, _r, wg in self.raw if wg), default=0)
        if largest > self.e.underlay_mtu:
            return Verdict(name, FAIL, f"largest {largest} B")
        return Verdict(
            name, PASS, f"largest outer packet {largest} B (overlay MTU {self.e.overlay_mtu})"
        )
