"""The headers scapy decodes in one captured frame, with the fields a reader needs.

`decode_layers(raw, link, tunnel_port, tunnel)` turns a frame of a per-hop capture
(an Ethernet frame, or a bare IP packet from a TUN device such as
wireguard-go's ``flannel-wg``) into `Layer`s: Ethernet, IPv4 or IPv6, UDP,
VXLAN and the pod's own frame inside it, or a WireGuard data message whose
payload stays sealed (its length is all a reader can see), then the pod's
ICMP/ICMPv6, TCP or UDP.  The headers in front of a tunnel header (VXLAN,
WireGuard) are the tunnel's: their names say "(outer)" and `Layer.outer` is
set; every other IP header is the pod's ("IPv4 (pod)", "IPv6 (pod)").

The journey builder (`flannelish.lab.journey`) decides which frame to show
at a hop; this module only reads one, for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
WIREGUARD_TYPES = {1: "handshake initiation", 2: "handshake response", 3: "cookie", 4: "data"}


@dataclass
class Field:
    name: str
    value: str
    changed: bool = False
    before: str = ""


@dataclass
class Layer:
    name: str  # Ethernet, IPv4 (outer), UDP (outer), VXLAN, WireGuard, IPv6 (pod), ICMP...
    kind: str  # css class: ether, ip, udp, vxlan, wireguard, sealed, icmp, tcp, payload
    fields: list[Field] = field(default_factory=list)
    added: bool = False  # first hop where this layer appears (encapsulation)
    outer: bool = False

    def get(self, name: str) -> str:
        return next((f.value for f in self.fields if f.name == name), "")


def _tunnel_classes(tunnel_port: int, tunnel: str) -> tuple[Any, ...]:
    """VXLAN and WireGuard, with `tunnel`'s bound to `tunnel_port` (only that one:
    scapy tries bindings in order, and VXLAN bound to a WireGuard port, such as
    flannel-wg-v6's 51821, would win over WireGuard there)."""
    from scapy.contrib.wireguard import Wireguard
    from scapy.layers.inet import UDP
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import bind_layers

    if tunnel_port and tunnel == "wireguard":
        bind_layers(UDP, Wireguard, dport=tunnel_port)
        bind_layers(UDP, Wireguard, sport=tunnel_port)
    elif tunnel_port:
        bind_layers(UDP, VXLAN, dport=tunnel_port)
    return VXLAN, Wireguard


def _first(raw: bytes, link: str) -> Any:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    if link != "raw":
        return Ether(raw)
    version = raw[0] >> 4 if raw else 0
    return IP(raw) if version == 4 else IPv6(raw) if version == 6 else Raw(raw)


def decode_layers(
    raw: bytes, link: str = "ether", tunnel_port: int = 8472, tunnel: str = "vxlan"
) -> list[Layer]:
    """The headers of one frame (`link`: "ether", or "raw" for a bare IP packet;
    `tunnel`: "vxlan" or "wireguard", the protocol on UDP port `tunnel_port`)."""
    from scapy.contrib.wireguard import WireguardTransport
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Raw

    vxlan, wireguard = _tunnel_classes(tunnel_port, tunnel)
    pkt = _first(raw, link)
    # Everything in front of the tunnel header belongs to the tunnel.
    tunnelled = any(layer in (vxlan, wireguard) for layer in pkt.layers())
    outer = tunnelled
    layers: list[Layer] = []
    cur: Any = pkt
    while cur is not None and cur.__class__.__name__ != "NoPayload":
        tag = " (outer)" if outer else ""
        if isinstance(cur, Ether):
            fields = [Field("src", cur.src), Field("dst", cur.dst), Field("type", hex(cur.type))]
            layers.append(Layer(f"Ethernet{tag}", "ether", fields, outer=outer))
        elif isinstance(cur, IP):
            fields = [
                Field("src", cur.src),
                Field("dst", cur.dst),
                Field("ttl", str(cur.ttl)),
                Field("len", str(cur.len)),
                Field("id", str(cur.id)),
                Field("flags", str(cur.flags) or "-"),
                Field("proto", PROTO_NAMES.get(cur.proto, str(cur.proto))),
            ]
            layers.append(Layer(f"IPv4{tag or ' (pod)'}", "ip", fields, outer=outer))
        elif isinstance(cur, IPv6):
            fields = [
                Field("src", cur.src),
                Field("dst", cur.dst),
                Field("hlim", str(cur.hlim)),
                Field("plen", str(cur.plen)),
                Field("fl", str(cur.fl)),
                Field("nh", PROTO_NAMES.get(cur.nh, str(cur.nh))),
            ]
            layers.append(Layer(f"IPv6{tag or ' (pod)'}", "ip", fields, outer=outer))
        elif isinstance(cur, IPv6ExtHdrFragment):
            fields = [Field("offset", str(cur.offset)), Field("m", str(cur.m))]
            layers.append(Layer("IPv6 fragment", "ip", fields, outer=outer))
        elif isinstance(cur, vxlan):
            fields = [Field("vni", str(cur.vni)), Field("flags", str(cur.flags))]
            layers.append(Layer("VXLAN", "vxlan", fields, outer=True))
            outer = False
        elif isinstance(cur, wireguard):
            kind = WIREGUARD_TYPES.get(cur.message_type, str(cur.message_type))
            fields = [Field("type", f"{cur.message_type} ({kind})")]
            body = cur.payload
            if isinstance(body, WireguardTransport):
                sealed = bytes(body.encrypted_encapsulated_packet or b"")
                fields += [
                    Field("receiver", f"{body.receiver_index:#010x}"),
                    Field("counter", str(body.counter)),
                ]
                layers.append(Layer("WireGuard", "wireguard", fields, outer=True))
                # ChaCha20-Poly1305: the pod packet, padded to 16 bytes, plus a 16-byte tag.
                layers.append(
                    Layer(
                        "encrypted pod packet",
                        "sealed",
                        [
                            Field("bytes", str(len(sealed))),
                            Field("inner headers", "not readable"),
                        ],
                    )
                )
            else:
                layers.append(Layer("WireGuard", "wireguard", fields, outer=True))
            break
        elif isinstance(cur, UDP):
            fields = [
                Field("sport", str(cur.sport)),
                Field("dport", str(cur.dport)),
                Field("len", str(cur.len)),
            ]
            layers.append(Layer(f"UDP{tag}", "udp", fields, outer=outer))
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
            layers.append(Layer("ICMP", "icmp", _icmp_fields(cur)))
        elif cur.__class__.__name__.startswith("ICMPv6"):
            layers.append(Layer("ICMPv6", "icmp", _icmp_fields(cur)))
        elif isinstance(cur, ARP):
            layers.append(Layer("ARP", "payload", [Field("op", str(cur.op))]))
        elif isinstance(cur, Raw):
            layers.append(Layer("payload", "payload", [Field("bytes", str(len(cur.load)))]))
            break
        else:
            layers.append(Layer(cur.__class__.__name__, "payload", []))
        cur = cur.payload
    return layers


def _icmp_fields(icmp: Any) -> list[Field]:
    fields = [Field("type", str(icmp.type)), Field("code", str(icmp.code))]
    names = {f.name for f in icmp.fields_desc}
    fields += [Field(name, str(getattr(icmp, name))) for name in ("id", "seq") if name in names]
    return fields
