"""Packet journeys: one packet followed through every hop it crossed, from real captures.

Input: the hops of a path (`Hop`: where we captured, which interface, its MTU),
the frames captured at each hop (`(timestamp ns, bytes)`, e.g. the per-hop
pcaps of `flannelish.lab.hops`), and the flow to follow (`FlowSpec`).
Output: a `Journey`: one `Station` per hop with the headers scapy decoded
there (Ethernet, outer IPv4/UDP/VXLAN when encapsulated, the pod's IPv4 and
ICMP/TCP/UDP), the fields that changed since the previous hop, and
`Finding`s: where encapsulation starts and ends, that the pod addresses never
change (no NAT), TTL, length against each hop's MTU, and hops the packet must
not reach (same-node traffic never leaves the bridge).

Size: one algorithm (decode a hop, match the flow, diff against the previous
hop, derive findings) with its records, read top to bottom; it is over the
usual ~450 lines because splitting it would scatter one walk over modules.

Which packet: at the first hop where the flow shows, the echo request of the
largest ICMP (the MTU-sized ping), the first TCP segment carrying data, or the
first UDP datagram; at every other hop the same packet (ICMP id and sequence,
the TCP sequence number inside a segment's range, the first UDP datagram of
the same ports and length).  No I/O here except `load_hops`, so unit tests run
it on small recorded pcaps (tests/lab/journeys/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

VXLAN_HEADER = 8
ETHER = 14
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}

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
    """The pod's IPv4 packet inside a frame (itself, or inside VXLAN)."""

    ts: int
    index: int  # frame number in the hop's pcap, from 1 (as Wireshark counts)
    raw: bytes
    encapsulated: bool
    src: str
    dst: str
    proto: str
    length: int  # the pod packet's IPv4 total length
    outer_length: int  # the frame's outer IPv4 total length (== length when not encapsulated)
    ttl: int
    ident: tuple[int, ...]  # ICMP (type, id, seq) / TCP (sport, dport, seq, payload) / UDP (...)


@dataclass
class Field:
    name: str
    value: str
    changed: bool = False
    before: str = ""


@dataclass
class Layer:
    name: str  # Ethernet, IPv4 (outer), UDP (outer), VXLAN, Ethernet (inner), IPv4 (pod), ICMP...
    kind: str  # css class: ether, ip, udp, vxlan, icmp, tcp, payload
    fields: list[Field] = field(default_factory=list)
    added: bool = False  # first hop where this layer appears (encapsulation)
    outer: bool = False

    def get(self, name: str) -> str:
        return next((f.value for f in self.fields if f.name == name), "")


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


def _ipv4(raw: bytes, offset: int) -> tuple[int, int, int, str, str, int] | None:
    """(header length, total length, proto, src, dst, ttl) of an IPv4 header at offset."""
    if len(raw) < offset + 20 or raw[offset] >> 4 != 4:
        return None
    ihl = (raw[offset] & 0x0F) * 4
    total = int.from_bytes(raw[offset + 2 : offset + 4], "big")
    src = str(IPv4Address(raw[offset + 12 : offset + 16]))
    dst = str(IPv4Address(raw[offset + 16 : offset + 20]))
    return ihl, total, raw[offset + 9], src, dst, raw[offset + 8]


def _l2_payload(raw: bytes, offset: int) -> tuple[int, int]:
    """(ethertype, offset of the payload) of an Ethernet header at offset (through VLAN tags)."""
    pos = offset + 12
    ethertype = int.from_bytes(raw[pos : pos + 2], "big")
    while ethertype in (0x8100, 0x88A8) and len(raw) >= pos + 6:
        pos += 4
        ethertype = int.from_bytes(raw[pos : pos + 2], "big")
    return ethertype, pos + 2


def _ident(raw: bytes, l4: int, proto: int, total: int, ihl: int) -> tuple[int, ...]:
    if proto == 1 and len(raw) >= l4 + 8:
        return (
            raw[l4],
            int.from_bytes(raw[l4 + 4 : l4 + 6], "big"),
            int.from_bytes(raw[l4 + 6 : l4 + 8], "big"),
        )
    if proto == 6 and len(raw) >= l4 + 20:
        data_off = (raw[l4 + 12] >> 4) * 4
        payload = total - ihl - data_off
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


def pod_packet(ts: int, index: int, raw: bytes) -> Packet | None:
    """The innermost IPv4 packet of an Ethernet frame, looking inside VXLAN."""
    if len(raw) < ETHER:
        return None
    ethertype, off = _l2_payload(raw, 0)
    outer = _ipv4(raw, off) if ethertype == 0x0800 else None
    if outer is None:
        return None
    ihl, total, proto, src, dst, ttl = outer
    encapsulated = False
    outer_total = total
    if proto == 17:
        vx = off + ihl + 8
        if len(raw) >= vx + VXLAN_HEADER + ETHER and raw[vx] & 0x08:
            inner_type, inner_off = _l2_payload(raw, vx + VXLAN_HEADER)
            inner = _ipv4(raw, inner_off) if inner_type == 0x0800 else None
            if inner is not None:
                encapsulated = True
                off = inner_off
                ihl, total, proto, src, dst, ttl = inner
    return Packet(
        ts=ts,
        index=index,
        raw=raw,
        encapsulated=encapsulated,
        src=src,
        dst=dst,
        proto=PROTO_NAMES.get(proto, str(proto)),
        length=total,
        outer_length=outer_total,
        ttl=ttl,
        ident=_ident(raw, off + ihl, proto, total, ihl),
    )


# -- choosing the packet and finding it at every hop ---------------------------


def _of_flow(p: Packet, flow: FlowSpec) -> bool:
    if (p.src, p.dst, p.proto) != (flow.src, flow.dst, flow.proto):
        return False
    if flow.proto == "icmp":
        return bool(p.ident) and p.ident[0] == 8  # echo requests
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


def packets_of(frames: list[tuple[int, bytes]]) -> list[Packet]:
    found = []
    for index, (ts, raw) in enumerate(frames, start=1):
        p = pod_packet(ts, index, raw)
        if p is not None:
            found.append(p)
    return found


# -- decoding for the reader (scapy) -------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def decode_layers(raw: bytes, vxlan_port: int = 8472) -> list[Layer]:
    """The headers scapy decodes in a frame, with the fields a reader needs."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import ARP, Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw, bind_layers

    if vxlan_port:
        bind_layers(UDP, VXLAN, dport=vxlan_port)
    pkt = Ether(raw)
    layers: list[Layer] = []
    ips = sum(1 for layer in pkt.layers() if layer is IP)
    seen_ip = 0
    encapsulated = False
    cur: Any = pkt
    while cur is not None and cur.__class__.__name__ != "NoPayload":
        inner = encapsulated
        if isinstance(cur, Ether):
            # The pod's frame is "Ethernet" wherever it is; the tunnel's header is "outer".
            tag = " (outer)" if not inner and ips > 1 else ""
            layers.append(
                Layer(
                    f"Ethernet{tag}",
                    "ether",
                    [Field("src", cur.src), Field("dst", cur.dst), Field("type", hex(cur.type))],
                    outer=not inner and ips > 1,
                )
            )
        elif isinstance(cur, IP):
            seen_ip += 1
            outer = ips > 1 and seen_ip == 1
            flags = str(cur.flags) or "-"
            layers.append(
                Layer(
                    "IPv4 (outer)" if outer else "IPv4 (pod)",
                    "ip",
                    [
                        Field("src", cur.src),
                        Field("dst", cur.dst),
                        Field("ttl", str(cur.ttl)),
                        Field("len", str(cur.len)),
                        Field("id", str(cur.id)),
                        Field("flags", flags),
                        Field("proto", PROTO_NAMES.get(cur.proto, str(cur.proto))),
                    ],
                    outer=outer,
                )
            )
        elif isinstance(cur, VXLAN):
            layers.append(
                Layer(
                    "VXLAN",
                    "vxlan",
                    [Field("vni", str(cur.vni)), Field("flags", str(cur.flags))],
                    outer=True,
                )
            )
            encapsulated = True
        elif isinstance(cur, UDP):
            outer = ips > 1 and seen_ip == 1
            layers.append(
                Layer(
                    "UDP (outer)" if outer else "UDP",
                    "udp",
                    [
                        Field("sport", str(cur.sport)),
                        Field("dport", str(cur.dport)),
                        Field("len", str(cur.len)),
                    ],
                    outer=outer,
                )
            )
        elif isinstance(cur, TCP):
            fields = [
                Field("sport", str(cur.sport)),
                Field("dport", str(cur.dport)),
                Field("seq", str(cur.seq)),
                Field("ack", str(cur.ack)),
                Field("flags", str(cur.flags)),
            ]
            mss = dict(o for o in cur.options if isinstance(o, tuple) and len(o) == 2).get("MSS")
            if mss:
                fields.append(Field("mss", str(mss)))
            layers.append(Layer("TCP", "tcp", fields))
        elif isinstance(cur, ICMP):
            layers.append(
                Layer(
                    "ICMP",
                    "icmp",
                    [
                        Field("type", str(cur.type)),
                        Field("code", str(cur.code)),
                        Field("id", str(cur.id)),
                        Field("seq", str(cur.seq)),
                    ],
                )
            )
        elif isinstance(cur, ARP):
            layers.append(Layer("ARP", "payload", [Field("op", str(cur.op))]))
        elif isinstance(cur, Raw):
            layers.append(Layer("payload", "payload", [Field("bytes", str(len(cur.load)))]))
            break
        else:
            layers.append(Layer(cur.__class__.__name__, "payload", []))
        cur = cur.payload
    return layers


def _compare(stations: list[Station]) -> None:
    """Mark fields that changed since the previous hop that saw the packet, and new layers."""
    previous: Station | None = None
    for st in stations:
        if not st.seen:
            continue
        if previous is not None:
            before = {layer.name: layer for layer in previous.layers}
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
        previous = st


# -- the journey ----------------------------------------------------------------


def build(
    flow: FlowSpec,
    frames: dict[str, list[tuple[int, bytes]]],
    vxlan_port: int = 8472,
) -> Journey:
    """Follow one packet of `flow` through its hops (frames: hop key -> captured frames)."""
    by_hop = {hop.key: packets_of(frames.get(hop.key, [])) for hop in flow.hops}
    anchor = None
    for hop in flow.hops:
        anchor = choose(by_hop[hop.key], flow)
        if anchor is not None:
            break
    stations = []
    for hop in flow.hops:
        st = Station(hop, seen=False, frames_at_hop=len(frames.get(hop.key, [])))
        found = find(by_hop[hop.key], anchor) if anchor is not None else None
        if found is not None:
            st.seen, st.packet = True, found
            st.layers = decode_layers(found.raw, vxlan_port)
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

    # no NAT: the pod addresses are the same at every hop
    rewritten = [
        s for s in seen if s.packet and (s.packet.src, s.packet.dst) != (flow.src, flow.dst)
    ]
    if rewritten:
        s = rewritten[0]
        assert s.packet is not None
        out.append(
            Finding(
                "nat",
                False,
                f"NAT at {s.hop.label}: {s.packet.src} → {s.packet.dst} "
                f"instead of {flow.src} → {flow.dst}",
            )
        )
    else:
        out.append(
            Finding(
                "nat",
                True,
                f"pod addresses {flow.src} → {flow.dst} unchanged at all {len(seen)} hops (no NAT)",
            )
        )

    encap = [s for s in seen if s.packet and s.packet.encapsulated]
    if encap:
        first, last = encap[0], encap[-1]
        after = next((s for s in seen if seen.index(s) > seen.index(last)), None)
        outer = next((layer for layer in first.layers if layer.name == "IPv4 (outer)"), None)
        vx = next((layer for layer in first.layers if layer.name == "VXLAN"), None)
        udp = next((layer for layer in first.layers if layer.name == "UDP (outer)"), None)
        detail = ""
        if outer and vx and udp:
            detail = (
                f" (outer {outer.get('src')} → {outer.get('dst')}, udp/{udp.get('dport')}, "
                f"VNI {vx.get('vni')})"
            )
        text = f"wrapped in VXLAN at {first.hop.label}{detail}"
        if after is not None:
            text += f"; unwrapped before {after.hop.label}"
        out.append(Finding("encap", True, text))
    elif flow.same_node:
        out.append(Finding("encap", True, "never encapsulated: it does not leave the node"))
    elif flow.backend == "vxlan":
        out.append(Finding("encap", False, "crossed the underlay without VXLAN"))
    else:
        out.append(
            Finding(
                "encap",
                True,
                f"never encapsulated: {flow.backend} routes the pod "
                "packet natively over the underlay",
            )
        )

    if seen:
        first_p, last_p = seen[0].packet, seen[-1].packet
        assert first_p is not None and last_p is not None
        routers = first_p.ttl - last_p.ttl
        how = f"routed {routers} time(s)" if routers else "bridged, never routed"
        out.append(
            Finding(
                "ttl",
                True,
                f"TTL {first_p.ttl} at {seen[0].hop.label}, "
                f"{last_p.ttl} at {seen[-1].hop.label}: {how}",
            )
        )
    out.extend(_mtu(seen))
    return out


def _mtu(seen: list[Station]) -> list[Finding]:
    out = []
    over = []
    gso = []
    biggest = ""
    for s in seen:
        p = s.packet
        assert p is not None
        size = p.outer_length
        if s.hop.mtu and size > s.hop.mtu:
            if p.proto == "tcp" and s.hop.role in (
                POD_SRC,
                BRIDGE_SRC,
                TUNNEL_SRC,
                BRIDGE_DST,
                POD_DST,
                TUNNEL_DST,
            ):
                gso.append(s)
                s.notes.append(
                    f"{size} B > MTU {s.hop.mtu}: a GSO super-packet; the kernel "
                    "cuts it into MTU-sized segments before the wire"
                )
            else:
                over.append(s)
                s.notes.append(f"{size} B does not fit MTU {s.hop.mtu}")
    wire = [s for s in seen if s.hop.role in (UNDERLAY_SRC, WIRE, UNDERLAY_DST)]
    if wire:
        s = wire[0]
        p = s.packet
        assert p is not None
        if p.encapsulated:
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
