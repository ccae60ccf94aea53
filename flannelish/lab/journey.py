"""Packet journeys: one packet followed through every hop it crossed, from real captures.

Input: the hops of a path (`Hop`: where we captured, which interface, its MTU
and link type), the frames captured at each hop (`(timestamp ns, bytes)`, e.g.
the per-hop pcaps of `flannelish.lab.hops`), and the flow to follow
(`FlowSpec`).  Output: a `Journey`: one `Station` per hop with the headers
scapy decoded there (`flannelish.lab.headers`: Ethernet, outer IPv4 or IPv6,
UDP and VXLAN or WireGuard when tunnelled, the pod's IPv4 or IPv6 and
ICMP/ICMPv6/TCP/UDP), the fields that changed since the previous hop, and
`Finding`s: where encapsulation (or encryption) starts and ends, that the pod
addresses never change (no NAT), TTL or hop limit, length against each hop's
MTU, and hops the packet must not reach (same-node traffic never leaves the
bridge).  One walk for every backend and both families: VXLAN over IPv4 or
IPv6, host-gw, WireGuard.

Size: one algorithm (decode a hop, match the flow, diff against the previous
hop, derive findings) with its records, read top to bottom; it is over the
usual ~450 lines because splitting it would scatter one walk over modules.

Which packet: at the first hop where the flow shows, the echo request of the
largest ICMP or ICMPv6 (the MTU-sized ping), the first TCP segment carrying
data, or the first UDP datagram; at every other hop the same packet (ICMP id
and sequence, the TCP sequence number inside a segment's range, the first UDP
datagram of the same ports and length).  WireGuard encrypts it on the
underlay, so there nothing of it is readable: the encrypted hop shows the
first WireGuard data message from the source node to the destination node,
after the packet left the tunnel device, whose sealed length is the packet's
padded to 16 bytes; the next underlay hops show that same message (receiver
index and counter), and after the far tunnel device the pod packet is found
again.  No I/O here except `load_frames`, so unit tests run it on small
recorded pcaps (tests/lab/journeys/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

from flannelish.lab.headers import Layer, decode_layers

VXLAN_HEADER = 8
ETHER = 14
PROTO_NAMES = {1: "icmp", 58: "icmp", 6: "tcp", 17: "udp"}  # ICMPv6 is "icmp" too
ECHO_REQUEST = (8, 128)  # ICMP, ICMPv6
IPV6_EXTENSIONS = (0, 43, 44, 60)  # hop-by-hop, routing, fragment, destination options
ENCRYPTED = "wireguard"  # Packet.proto of a WireGuard data message

# roles of a hop on the path
POD_SRC, BRIDGE_SRC, TUNNEL_SRC, UNDERLAY_SRC = (
    "pod-src",
    "bridge-src",
    "tunnel-src",
    "underlay-src",
)
WIRE, UNDERLAY_DST, TUNNEL_DST, BRIDGE_DST, POD_DST = (
    "wire",
    "underlay-dst",
    "tunnel-dst",
    "bridge-dst",
    "pod-dst",
)


@dataclass(frozen=True)
class Hop:
    key: str  # file-name safe: node1-cni0
    label: str  # "node1 cni0 (bridge)"
    netns: str
    iface: str
    role: str
    node: str = ""
    mtu: int = 0
    mac: str = ""
    pcap: str = ""  # relative to the report
    expect_seen: bool = True  # False: the packet must not show here (same-node flows)
    link: str = "ether"  # "raw": bare IP packets, no link header (a TUN device: flannel-wg)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Hop:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


@dataclass(frozen=True)
class FlowSpec:
    id: str  # icmp-cross, tcp-cross, udp-cross, icmp-same
    title: str
    proto: str
    src: str  # pod IPs
    dst: str
    src_pod: str
    dst_pod: str
    same_node: bool
    backend: str
    port: int = 0  # TCP/UDP destination port
    hops: tuple[Hop, ...] = ()
    family: int = 4
    src_node_ip: str = ""  # the nodes' public addresses of the family: the tunnel's ends
    dst_node_ip: str = ""
    # The UDP port of the family's tunnel: VXLAN's, or the family's WireGuard device's
    # (flannel-wg 51820, flannel-wg-v6 51821); 0: the port `build` is given.
    tunnel_port: int = 0

    def to_dict(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        doc["hops"] = [h.to_dict() for h in self.hops]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FlowSpec:
        fields = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        fields["hops"] = tuple(Hop.from_dict(h) for h in doc.get("hops", []))
        return cls(**fields)


@dataclass(frozen=True)
class Packet:
    """The pod's packet inside a frame (itself, or inside VXLAN), or a WireGuard data
    message (`encrypted`: src/dst are the outer addresses, `ident` its receiver and
    counter, `length` the sealed packet's padded length)."""

    ts: int
    index: int  # frame number in the hop's pcap, from 1 (as Wireshark counts)
    raw: bytes
    encapsulated: bool
    src: str
    dst: str
    proto: str
    length: int  # the pod packet's IP total length
    outer_length: int  # the frame's outer IP total length (== length when not encapsulated)
    ttl: int  # TTL or hop limit
    ident: tuple[int, ...]  # ICMP (type, id, seq) / TCP (sport, dport, seq, payload) / UDP (...)
    family: int = 4
    encrypted: bool = False


@dataclass
class Station:
    hop: Hop
    seen: bool
    packet: Packet | None = None
    layers: list[Layer] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # layers gone since the previous hop
    delta_us: float | None = None  # since the first hop
    notes: list[str] = field(default_factory=list)
    frames_at_hop: int = 0

    @property
    def ok(self) -> bool:
        return self.seen == self.hop.expect_seen


@dataclass
class Finding:
    kind: str  # nat, encap, ttl, mtu, path, capture
    ok: bool
    text: str


@dataclass
class Journey:
    flow: FlowSpec
    stations: list[Station]
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def finding(self, kind: str) -> Finding | None:
        return next((f for f in self.findings if f.kind == kind), None)


# -- finding the pod packet in a frame ----------------------------------------


@dataclass(frozen=True)
class _Ip:
    version: int
    l4: int  # offset of the transport header (-1: a non-first fragment)
    total: int  # the whole packet's length (IPv6: 40 + payload length)
    proto: int  # the transport protocol (after IPv6 extension headers)
    src: str
    dst: str
    ttl: int  # IPv4 TTL or IPv6 hop limit


def _ip(raw: bytes, offset: int) -> _Ip | None:
    """The IPv4 or IPv6 header at offset (IPv6: through its extension headers)."""
    if len(raw) < offset + 20:
        return None
    version = raw[offset] >> 4
    if version == 4:
        ihl = (raw[offset] & 0x0F) * 4
        frag = int.from_bytes(raw[offset + 6 : offset + 8], "big") & 0x1FFF
        return _Ip(
            4,
            -1 if frag else offset + ihl,
            int.from_bytes(raw[offset + 2 : offset + 4], "big"),
            raw[offset + 9],
            str(IPv4Address(raw[offset + 12 : offset + 16])),
            str(IPv4Address(raw[offset + 16 : offset + 20])),
            raw[offset + 8],
        )
    if version != 6 or len(raw) < offset + 40:
        return None
    total = 40 + int.from_bytes(raw[offset + 4 : offset + 6], "big")
    proto, pos, first = raw[offset + 6], offset + 40, True
    while proto in IPV6_EXTENSIONS and len(raw) >= pos + 8:
        if proto == 44:  # fragment header: 8 bytes; only the first fragment has the L4 header
            first = first and int.from_bytes(raw[pos + 2 : pos + 4], "big") >> 3 == 0
            proto, pos = raw[pos], pos + 8
        else:
            proto, pos = raw[pos], pos + (raw[pos + 1] + 1) * 8
    return _Ip(
        6,
        pos if first else -1,
        total,
        proto,
        str(IPv6Address(raw[offset + 8 : offset + 24])),
        str(IPv6Address(raw[offset + 24 : offset + 40])),
        raw[offset + 7],
    )


def _l2_payload(raw: bytes, offset: int) -> tuple[int, int]:
    """(ethertype, offset of the payload) of an Ethernet header at offset (through VLAN tags)."""
    pos = offset + 12
    ethertype = int.from_bytes(raw[pos : pos + 2], "big")
    while ethertype in (0x8100, 0x88A8) and len(raw) >= pos + 6:
        pos += 4
        ethertype = int.from_bytes(raw[pos : pos + 2], "big")
    return ethertype, pos + 2


def _ip_in_frame(raw: bytes, offset: int) -> _Ip | None:
    ethertype, off = _l2_payload(raw, offset)
    return _ip(raw, off) if ethertype in (0x0800, 0x86DD) else None


def _ident(raw: bytes, ip: _Ip, start: int) -> tuple[int, ...]:
    l4, proto = ip.l4, ip.proto
    if l4 < 0:
        return ()
    if proto in (1, 58) and len(raw) >= l4 + 8:
        return (
            raw[l4],
            int.from_bytes(raw[l4 + 4 : l4 + 6], "big"),
            int.from_bytes(raw[l4 + 6 : l4 + 8], "big"),
        )
    if proto == 6 and len(raw) >= l4 + 20:
        data_off = (raw[l4 + 12] >> 4) * 4
        payload = ip.total - (l4 - start) - data_off
        return (
            int.from_bytes(raw[l4 : l4 + 2], "big"),
            int.from_bytes(raw[l4 + 2 : l4 + 4], "big"),
            int.from_bytes(raw[l4 + 4 : l4 + 8], "big"),
            payload,
            raw[l4 + 13],
        )
    if proto == 17 and len(raw) >= l4 + 8:
        return (
            int.from_bytes(raw[l4 : l4 + 2], "big"),
            int.from_bytes(raw[l4 + 2 : l4 + 4], "big"),
            int.from_bytes(raw[l4 + 4 : l4 + 6], "big"),
        )
    return ()


def _wireguard_data(raw: bytes, udp: int, tunnel_port: int) -> tuple[int, int, int] | None:
    """(receiver index, counter, sealed length) of a WireGuard data message in UDP at `udp`."""
    body = raw[udp + 8 :]
    ports = (
        int.from_bytes(raw[udp : udp + 2], "big"),
        int.from_bytes(raw[udp + 2 : udp + 4], "big"),
    )
    if tunnel_port and tunnel_port not in ports:
        return None
    # type 4, three reserved zero bytes, receiver, counter (16 bytes), then ChaCha20-Poly1305
    # output: the packet padded to 16 bytes but not past the device MTU, and a 16-byte tag
    # (an empty keepalive: the tag only)
    if len(body) < 32 or body[:4] != b"\x04\0\0\0":
        return None
    receiver = int.from_bytes(body[4:8], "little")
    return receiver, int.from_bytes(body[8:16], "little"), len(body) - 32


def pod_packet(
    ts: int, index: int, raw: bytes, link: str = "ether", tunnel_port: int = 0
) -> Packet | None:
    """The innermost pod packet of a frame, looking inside VXLAN; or a WireGuard data
    message (`encrypted`: nothing inside is readable). `link`: "ether", or "raw" for a
    bare IP packet (a TUN device)."""
    if link == "raw":
        start, outer = 0, _ip(raw, 0)
    else:
        if len(raw) < ETHER:
            return None
        _type, start = _l2_payload(raw, 0)
        outer = _ip_in_frame(raw, 0)
    if outer is None:
        return None
    ip, encapsulated = outer, False
    if outer.proto == 17 and outer.l4 >= 0:
        vx = outer.l4 + 8
        sealed = _wireguard_data(raw, outer.l4, tunnel_port)
        if sealed is not None:
            receiver, counter, padded = sealed
            return Packet(ts, index, raw, True, outer.src, outer.dst, ENCRYPTED, padded,
                          outer.total, outer.ttl, (receiver, counter), outer.version,
                          encrypted=True)  # fmt: skip
        if len(raw) >= vx + VXLAN_HEADER + ETHER and raw[vx] & 0x08:
            inner = _ip_in_frame(raw, vx + VXLAN_HEADER)
            if inner is not None:
                encapsulated, ip = True, inner
                start = _l2_payload(raw, vx + VXLAN_HEADER)[1]
    return Packet(
        ts=ts,
        index=index,
        raw=raw,
        encapsulated=encapsulated,
        src=ip.src,
        dst=ip.dst,
        proto=PROTO_NAMES.get(ip.proto, str(ip.proto)),
        length=ip.total,
        outer_length=outer.total,
        ttl=ip.ttl,
        ident=_ident(raw, ip, start),
        family=ip.version,
    )


# -- choosing the packet and finding it at every hop ---------------------------


def _of_flow(p: Packet, flow: FlowSpec) -> bool:
    if (p.src, p.dst, p.proto) != (flow.src, flow.dst, flow.proto):
        return False
    if flow.proto == "icmp":
        return bool(p.ident) and p.ident[0] in ECHO_REQUEST
    return bool(p.ident) and (not flow.port or p.ident[1] == flow.port)


def choose(packets: list[Packet], flow: FlowSpec) -> Packet | None:
    """The packet to follow, among the flow's packets at the first hop that saw any."""
    mine = [p for p in packets if _of_flow(p, flow)]
    if not mine:
        return None
    if flow.proto == "icmp":
        return max(mine, key=lambda p: (p.length, -p.ts))
    if flow.proto == "tcp":
        return next((p for p in mine if p.ident[3] > 0), mine[0])
    return mine[0]


def same_packet(p: Packet, anchor: Packet, exact: bool = True) -> bool:
    """Is `p` (at another hop) the anchor packet, or a segment or super-packet holding it?

    `exact`: same pod addresses too.  Otherwise the source address may differ (a
    masquerade on the way rewrote it, and maybe the source port with it), so a
    rewritten packet is still found and reported as NAT instead of as missing.
    """
    if p.proto != anchor.proto or not p.ident:
        return False
    if exact and (p.src, p.dst) != (anchor.src, anchor.dst):
        return False
    if not exact and p.dst != anchor.dst:
        return False
    if anchor.proto == "icmp":
        return p.ident == anchor.ident
    if anchor.proto == "tcp":
        if p.ident[1] != anchor.ident[1] or (exact and p.ident[0] != anchor.ident[0]):
            return False
        seq, length = p.ident[2], p.ident[3]
        want = anchor.ident[2]
        if length == 0 or anchor.ident[3] == 0:
            return seq == want and length == anchor.ident[3]
        return seq <= want < seq + length  # GSO: one super-packet, or its first segment
    if anchor.proto == "udp":
        return p.ident[1:] == anchor.ident[1:] and (not exact or p.ident[0] == anchor.ident[0])
    return p.ident == anchor.ident


def find(packets: list[Packet], anchor: Packet) -> Packet | None:
    """The anchor packet among one hop's packets: unchanged if there, else NAT-rewritten."""
    for exact in (True, False):
        found = next((p for p in packets if same_packet(p, anchor, exact)), None)
        if found is not None:
            return found
    return None


def sealed(packets: list[Packet], plain: Packet, flow: FlowSpec) -> Packet | None:
    """The WireGuard data message carrying `plain` (the pod packet as it entered the
    tunnel device): from the flow's source node to its destination node, not before
    `plain`, as long as `plain` padded to 16 bytes (or exactly `plain`'s length: padding
    stops at the device MTU); the first such message."""
    sizes = (plain.length, -(-plain.length // 16) * 16)
    ends = (flow.src_node_ip, flow.dst_node_ip)
    return min(
        (
            p
            for p in packets
            if p.encrypted
            and p.ts >= plain.ts
            and p.length in sizes
            and (not all(ends) or (p.src, p.dst) == ends)
        ),
        key=lambda p: p.ts,
        default=None,
    )


def packets_of(
    frames: list[tuple[int, bytes]], link: str = "ether", tunnel_port: int = 0
) -> list[Packet]:
    found = []
    for index, (ts, raw) in enumerate(frames, start=1):
        p = pod_packet(ts, index, raw, link, tunnel_port)
        if p is not None:
            found.append(p)
    return found


def _compare(stations: list[Station]) -> None:
    """Mark fields that changed since the previous hop that saw the packet, and new layers.

    Where WireGuard encrypts the packet its own headers are hidden, not removed; after
    the far tunnel device they are compared with the last hop where they were readable.
    """
    previous: Station | None = None
    readable: Station | None = None
    for st in stations:
        if not st.seen or st.packet is None:
            continue
        if previous is not None:
            before = {layer.name: layer for layer in previous.layers}
            if readable is not None and not st.packet.encrypted:
                before = {layer.name: layer for layer in readable.layers} | before
            for layer in st.layers:
                old = before.get(layer.name)
                if old is None:
                    layer.added = True
                    continue
                for f in layer.fields:
                    was = old.get(f.name)
                    if was and was != f.value:
                        f.changed, f.before = True, was
            names = {layer.name for layer in st.layers}
            st.removed = [layer.name for layer in previous.layers if layer.name not in names]
            if st.packet.encrypted and previous.packet and not previous.packet.encrypted:
                hidden = ", ".join(st.removed)
                st.removed = []
                st.notes.append(f"encrypted here: {hidden} now sealed, not readable on the wire")
        previous = st
        if not st.packet.encrypted:
            readable = st


# -- the journey ----------------------------------------------------------------


UNDERLAY_ROLES = (UNDERLAY_SRC, WIRE, UNDERLAY_DST)


def build(
    flow: FlowSpec,
    frames: dict[str, list[tuple[int, bytes]]],
    tunnel_port: int = 8472,
) -> Journey:
    """Follow one packet of `flow` through its hops (frames: hop key -> captured frames).

    `tunnel_port`: the VXLAN port, or WireGuard's listen port (the flow's own
    `FlowSpec.tunnel_port` when it has one).
    """
    tunnel_port = flow.tunnel_port or tunnel_port
    port = tunnel_port if flow.backend == "wireguard" else 0
    tunnel = "wireguard" if flow.backend == "wireguard" else "vxlan"
    by_hop = {hop.key: packets_of(frames.get(hop.key, []), hop.link, port) for hop in flow.hops}
    anchor = None
    for hop in flow.hops:
        anchor = choose(by_hop[hop.key], flow)
        if anchor is not None:
            break
    stations = []
    looking_for, plain = anchor, anchor  # the packet as the next hop should show it
    for hop in flow.hops:
        st = Station(hop, seen=False, frames_at_hop=len(frames.get(hop.key, [])))
        packets = by_hop[hop.key]
        found = find(packets, looking_for) if looking_for is not None else None
        if found is None and anchor is not None and looking_for is not anchor:
            found = find(packets, anchor)  # decrypted again, past the far tunnel device
        if (
            found is None
            and plain is not None
            and port
            and not flow.same_node
            and hop.role in UNDERLAY_ROLES
        ):
            found = sealed(packets, plain, flow)
        if found is not None:
            st.seen, st.packet = True, found
            st.layers = decode_layers(found.raw, hop.link, tunnel_port, tunnel)
            if hop.link == "raw":
                st.notes.append("a layer-3 (TUN) device: bare IP packets, no Ethernet header")
            looking_for = found if found.encrypted else anchor
            plain = plain if found.encrypted else found
        stations.append(st)
    _compare(stations)
    journey = Journey(flow, stations)
    _timing(journey)
    journey.findings = _findings(journey, anchor)
    return journey


def _timing(journey: Journey) -> None:
    seen = [s for s in journey.stations if s.packet is not None]
    if not seen:
        return
    start = seen[0].packet.ts if seen[0].packet else 0
    for st in seen:
        assert st.packet is not None
        st.delta_us = (st.packet.ts - start) / 1000.0 if st.packet.ts and start else None


def _findings(j: Journey, anchor: Packet | None) -> list[Finding]:
    flow = j.flow
    out: list[Finding] = []
    if anchor is None:
        return [
            Finding(
                "capture",
                False,
                f"no {flow.proto} packet {flow.src} → {flow.dst} was captured at any hop",
            )
        ]
    seen = [s for s in j.stations if s.seen and s.packet is not None]
    where = [s for s in j.stations if s.seen != s.hop.expect_seen]
    missing = [s.hop.label for s in where if s.hop.expect_seen]
    leaked = [s.hop.label for s in where if not s.hop.expect_seen]
    if missing:
        out.append(Finding("path", False, f"not captured at {', '.join(missing)}"))
    if leaked:
        out.append(Finding("path", False, f"seen where it must not go: {', '.join(leaked)}"))
    if not where:
        path = " → ".join(s.hop.label for s in seen)
        text = f"seen at all {len(seen)} hops: {path}"
        absent = [s.hop.label for s in j.stations if not s.hop.expect_seen]
        if absent:
            text = (
                f"stays on the node: seen at {path}; never at {', '.join(absent)} "
                "(same-node traffic is bridged, it never reaches the tunnel or the underlay)"
            )
        out.append(Finding("path", True, text))

    readable = [s for s in seen if s.packet and not s.packet.encrypted]
    encrypted = [s for s in seen if s.packet and s.packet.encrypted]
    out.append(_nat(flow, readable, encrypted))
    out.extend(_tunnel(flow, seen, encrypted))
    if readable:
        first_p, last_p = readable[0].packet, readable[-1].packet
        assert first_p is not None and last_p is not None
        routers = first_p.ttl - last_p.ttl
        how = f"routed {routers} time(s)" if routers else "bridged, never routed"
        ttl = "hop limit" if flow.family == 6 else "TTL"
        out.append(
            Finding(
                "ttl",
                True,
                f"{ttl} {first_p.ttl} at {readable[0].hop.label}, "
                f"{last_p.ttl} at {readable[-1].hop.label}: {how}",
            )
        )
    out.extend(_mtu(seen))
    return out


def _nat(flow: FlowSpec, readable: list[Station], encrypted: list[Station]) -> Finding:
    """No NAT: the pod addresses are the same at every hop where they can be read."""
    for s in readable:
        assert s.packet is not None
        if (s.packet.src, s.packet.dst) != (flow.src, flow.dst):
            return Finding(
                "nat",
                False,
                f"NAT at {s.hop.label}: {s.packet.src} → {s.packet.dst} "
                f"instead of {flow.src} → {flow.dst}",
            )
    text = f"pod addresses {flow.src} → {flow.dst} unchanged at all {len(readable)} hops"
    if encrypted:
        text += f" where they are readable (encrypted at the other {len(encrypted)})"
    return Finding("nat", True, text + " (no NAT)")


def _outer(st: Station, kind: str) -> Layer | None:
    return next((layer for layer in st.layers if layer.outer and layer.kind == kind), None)


def _tunnel(flow: FlowSpec, seen: list[Station], encrypted: list[Station]) -> list[Finding]:
    """Where the packet is wrapped (VXLAN) or encrypted (WireGuard), and unwrapped."""
    encap = [s for s in seen if s.packet and s.packet.encapsulated]
    if not encap:
        if flow.same_node:
            return [Finding("encap", True, "never encapsulated: it does not leave the node")]
        if flow.backend in ("vxlan", "wireguard"):
            how = "VXLAN" if flow.backend == "vxlan" else "WireGuard"
            return [Finding("encap", False, f"crossed the underlay without {how}")]
        return [
            Finding(
                "encap",
                True,
                f"never encapsulated: {flow.backend} routes the pod "
                "packet natively over the underlay",
            )
        ]
    first, last = encap[0], encap[-1]
    after = next((s for s in seen if seen.index(s) > seen.index(last)), None)
    ip, udp = _outer(first, "ip"), _outer(first, "udp")
    detail = (
        f"outer {ip.get('src')} → {ip.get('dst')}, udp/{udp.get('dport')}" if ip and udp else ""
    )
    if not encrypted:
        vx = _outer(first, "vxlan")
        if vx is not None and detail:
            detail += f", VNI {vx.get('vni')}"
        text = f"wrapped in VXLAN at {first.hop.label}" + (f" ({detail})" if detail else "")
        if after is not None:
            text += f"; unwrapped before {after.hop.label}"
        return [Finding("encap", True, text)]
    wg = _outer(first, "wireguard")
    if wg is not None:
        detail += f", receiver {wg.get('receiver')}, counter {wg.get('counter')}"
    text = (
        f"encrypted by WireGuard at {first.hop.label} ({detail.lstrip(', ')}; the first data "
        "message between the two nodes after the tunnel device, of the packet's padded length)"
    )
    if after is not None:
        text += f"; decrypted before {after.hop.label}"
    return [Finding("encap", True, text), _unreadable(flow, encrypted)]


def _unreadable(flow: FlowSpec, encrypted: list[Station]) -> Finding:
    """On the encrypted hops, neither pod address appears anywhere in the frame."""
    pods = [ip_address(flow.src).packed, ip_address(flow.dst).packed]
    leaks = [s.hop.label for s in encrypted if s.packet and any(a in s.packet.raw for a in pods)]
    if leaks:
        return Finding("sealed", False, f"a pod address is readable at {', '.join(leaks)}")
    return Finding(
        "sealed",
        True,
        f"no inner header readable at the {len(encrypted)} encrypted hops: neither pod address "
        "appears in their bytes, the payload is only its length",
    )


def _mtu(seen: list[Station]) -> list[Finding]:
    out = []
    over = []
    gso = []
    biggest = ""
    plain_length = 0
    for s in seen:
        p = s.packet
        assert p is not None
        plain_length = plain_length if p.encrypted else p.length
        size = p.outer_length
        if s.hop.mtu and size > s.hop.mtu:
            if p.proto == "tcp" and s.hop.role not in UNDERLAY_ROLES:
                gso.append(s)
                s.notes.append(
                    f"{size} B > MTU {s.hop.mtu}: a GSO super-packet; the kernel "
                    "cuts it into MTU-sized segments before the wire"
                )
            else:
                over.append(s)
                s.notes.append(f"{size} B does not fit MTU {s.hop.mtu}")
        if s.hop.role in UNDERLAY_ROLES and not biggest:
            if p.encrypted:
                biggest = (
                    f"on the underlay: the {plain_length} B pod packet, encrypted ({p.length} B "
                    f"padded, plus WireGuard's 32 B), inside an outer packet of "
                    f"{p.outer_length} B (underlay MTU {s.hop.mtu})"
                )
            elif p.encapsulated:
                biggest = (
                    f"on the underlay: pod packet {p.length} B inside an outer packet of "
                    f"{p.outer_length} B (underlay MTU {s.hop.mtu})"
                )
            else:
                biggest = f"on the underlay: {p.length} B (underlay MTU {s.hop.mtu})"
    if over:
        out.append(
            Finding(
                "mtu",
                False,
                "too big for the MTU at "
                + ", ".join(f"{s.hop.label} ({s.notes[-1]})" for s in over),
            )
        )
    else:
        text = "fits every hop's MTU"
        if biggest:
            text += f"; {biggest}"
        if gso:
            text += f"; GSO super-packet at {', '.join(s.hop.label for s in gso)}"
        out.append(Finding("mtu", True, text))
    return out


# -- recorded captures ----------------------------------------------------------


def save_flows(path: Path, flows: list[FlowSpec]) -> None:
    path.write_text(json.dumps([f.to_dict() for f in flows], indent=2) + "\n")


def load_flows(path: Path) -> list[FlowSpec]:
    return [FlowSpec.from_dict(doc) for doc in json.loads(path.read_text())]


def load_frames(directory: Path, flows: list[FlowSpec]) -> dict[str, list[tuple[int, bytes]]]:
    """Each hop's frames from DIRECTORY/<hop key>.pcap (missing file: nothing captured)."""
    from flannelish.lab.hops import read_pcap

    frames: dict[str, list[tuple[int, bytes]]] = {}
    for flow in flows:
        for hop in flow.hops:
            if hop.key not in frames:
                path = directory / f"{hop.key}.pcap"
                frames[hop.key] = list(read_pcap(path)) if path.exists() else []
    return frames
