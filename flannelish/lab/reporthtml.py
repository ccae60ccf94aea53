"""The `verify --report` page: one self-contained HTML file (inline CSS and SVG).

No script, no web font, no external stylesheet or image: the page opens from
disk on a machine without network.  Structure a test (or a stylesheet) can
rely on: ``section#assertions`` (``table.assertions``), ``section#diagram``
(the inline ``svg``), and per journey ``section.journey[data-flow][data-family]`` holding
one ``div.lane[data-hop]`` per hop, ``data-seen`` true or false.
"""

from __future__ import annotations

import datetime
from html import escape
from typing import Any

from flannelish.lab import journey as jr
from flannelish.lab import names
from flannelish.lab.analysis import FAIL, PASS
from flannelish.lab.headers import Layer
from flannelish.lab.state import LabState

CSS = """
:root { --ok:#276749; --bad:#c53030; --muted:#718096; --line:#e2e8f0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 "DejaVu Sans", system-ui, sans-serif; margin: 0; color: #1a202c;
       background: #f7fafc; }
header { background: #1a365d; color: white; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; color: #bee3f8; }
header .verdict { font-weight: bold; padding: 2px 10px; border-radius: 10px; }
header .verdict.ok { background: #c6f6d5; color: var(--ok); }
header .verdict.bad { background: #fed7d7; color: var(--bad); }
nav a { color: #90cdf4; margin-right: 14px; }
main { padding: 8px 28px 40px; max-width: 1500px; }
section > h2 { border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 28px; }
table.assertions { border-collapse: collapse; background: white; width: 100%; }
table.assertions th, table.assertions td { border: 1px solid var(--line); padding: 5px 9px;
       text-align: left; vertical-align: top; }
td.pass { color: var(--ok); font-weight: bold; } td.FAIL { color: var(--bad); font-weight: bold; }
td.skip { color: #b7791f; }
.diagram { background: white; border: 1px solid var(--line); padding: 10px; overflow-x: auto; }
.diagram svg { max-width: 100%; height: auto; }
.legend span { display: inline-block; padding: 1px 8px; margin: 2px 4px 2px 0; border-radius: 4px;
       font-size: 12px; }
.journey { background: white; border: 1px solid var(--line); border-radius: 8px;
       padding: 6px 16px 14px; margin: 18px 0; }
.journey h3 { margin: 10px 0 4px; }
.journey.bad h3::after { content: "  ✗"; color: var(--bad); }
.journey.ok h3::after { content: "  ✓"; color: var(--ok); }
ul.findings { margin: 4px 0 12px; padding-left: 20px; }
ul.findings li.ok::marker { content: "✓ "; color: var(--ok); }
ul.findings li.bad { color: var(--bad); } ul.findings li.bad::marker { content: "✗ "; }
.lane { display: grid; grid-template-columns: 250px 1fr 190px; gap: 10px; align-items: start;
       border-left: 4px solid #3182ce; padding: 6px 8px; margin: 0 0 2px; background: #fbfdff; }
.lane.unseen { border-left-color: #cbd5e0; background: #f7f7f7; color: var(--muted); }
.lane.unseen.bad { border-left-color: var(--bad); background: #fff5f5; color: var(--bad); }
.lane.role-wire { border-left-color: #805ad5; }
.hop b { display: block; } .hop small { display: block; color: var(--muted); }
.hop a { font-size: 12px; }
.step { margin: 0 0 2px 250px; color: var(--muted); font-size: 12px; padding-left: 14px; }
.step::before { content: "↓ "; }
.stack { display: flex; flex-wrap: wrap; gap: 3px; }
.layer { border-radius: 4px; padding: 3px 6px; font-size: 12px; border: 1px solid rgba(0,0,0,.12);
       min-width: 80px; }
.layer .lname { font-weight: bold; font-size: 11px; text-transform: none; }
.layer .f { display: block; white-space: nowrap; font-family: "DejaVu Sans Mono", monospace;
       font-size: 11px; }
.layer .f.changed { background: #fefcbf; outline: 1px solid #d69e2e; }
.layer.added { box-shadow: 0 0 0 2px #dd6b20; }
.badge { background: #dd6b20; color: white; border-radius: 3px; padding: 0 4px; font-size: 10px;
       margin-left: 4px; }
.ether { background: #e9d8fd; } .ip { background: #bee3f8; } .udp { background: #c6f6d5; }
.vxlan, .wireguard { background: #feebc8; } .icmp, .tcp { background: #fed7e2; }
.sealed { background: repeating-linear-gradient(45deg, #e2e8f0, #e2e8f0 6px, #cbd5e0 6px,
       #cbd5e0 12px); }
.payload { background: #edf2f7; }
.layer.outer { border-style: dashed; border-color: #dd6b20; }
.size { font-size: 12px; }
.bar { height: 8px; background: #edf2f7; border-radius: 4px; overflow: hidden; margin: 3px 0; }
.bar .fill { height: 100%; background: #3182ce; } .bar .fill.over { background: #dd6b20; }
.note { font-size: 12px; color: #975a16; }
.removed { font-size: 12px; color: #975a16; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
"""


def _layer_html(layer: Layer) -> str:
    cls = (
        ["layer", layer.kind]
        + (["outer"] if layer.outer else [])
        + (["added"] if layer.added else [])
    )
    badge = '<span class="badge">added here</span>' if layer.added else ""
    fields = []
    for f in layer.fields:
        title = f' title="was {escape(f.before)}"' if f.changed else ""
        was = f" <s>{escape(f.before)}</s>" if f.changed else ""
        fields.append(
            f'<span class="f{" changed" if f.changed else ""}"{title}>{escape(f.name)} '
            f"{escape(f.value)}{was}</span>"
        )
    return (
        f'<div class="{" ".join(cls)}" data-layer="{escape(layer.name)}">'
        f'<div class="lname">{escape(layer.name)}{badge}</div>{"".join(fields)}</div>'
    )


def _size_html(st: jr.Station) -> str:
    p, mtu = st.packet, st.hop.mtu
    if p is None:
        return f'<div class="size">MTU {mtu or "?"}</div>'
    size = p.outer_length
    pct = min(100.0, 100.0 * size / mtu) if mtu else 0.0
    over = " over" if mtu and size > mtu else ""
    inner = f"<br>pod packet {p.length} B" if p.encapsulated else ""
    if p.encrypted:
        inner = f"<br>sealed pod packet {p.length} B (padded)"
    return (
        f'<div class="size">IPv{p.family} {size} B of MTU {mtu or "?"}'
        f'<div class="bar"><div class="fill{over}" style="width:{pct:.0f}%"></div></div>'
        f"TTL {p.ttl}{inner}</div>"
    )


def _step_text(prev: jr.Station | None, st: jr.Station) -> str:
    if prev is None or not st.seen:
        return ""
    added = [layer.name for layer in st.layers if layer.added]
    parts = []
    if added and st.packet is not None and st.packet.encrypted:
        parts.append("encrypted and wrapped: + " + ", ".join(added))
    elif added:
        parts.append("wrapped: + " + ", ".join(added))
    if st.removed:
        parts.append("unwrapped: - " + ", ".join(st.removed))
    changed = [
        f"{layer.name} {f.name} {f.before}→{f.value}"
        for layer in st.layers
        for f in layer.fields
        if f.changed and layer.name in ("IPv4 (pod)", "IPv6 (pod)", "Ethernet")
    ]
    if changed:
        parts.append("; ".join(changed))
    return "; ".join(parts) or "unchanged"


def _lane_html(st: jr.Station, flow_id: str) -> str:
    hop = st.hop
    seen = "true" if st.seen else "false"
    classes = ["lane", "seen" if st.seen else "unseen", f"role-{hop.role}"]
    if not st.ok:
        classes.append("bad")
    when = f", +{st.delta_us:.0f} µs" if st.delta_us is not None else ""
    frame = f" frame #{st.packet.index}" if st.packet is not None else ""
    head = (
        f'<div class="hop"><b>{escape(hop.label)}</b><small>netns {escape(hop.netns)}'
        f"{', MAC ' + escape(hop.mac) if hop.mac else ''}</small>"
        f'<a href="{escape(hop.pcap)}">{escape(hop.key)}.pcap</a>'
        f"<small>{st.frames_at_hop} frames captured{frame}{when}</small></div>"
    )
    if st.seen:
        body = '<div><div class="stack">' + "".join(_layer_html(x) for x in st.layers) + "</div>"
        if st.removed:
            body += f'<div class="removed">removed here: {escape(", ".join(st.removed))}</div>'
        body += "".join(f'<div class="note">{escape(n)}</div>' for n in st.notes) + "</div>"
    elif hop.expect_seen:
        body = '<div class="stack">✗ the packet was not captured here</div>'
    else:
        body = (
            '<div class="stack">not seen here, as it should be: '
            "same-node traffic stays on the bridge</div>"
        )
    return (
        f'<div class="{" ".join(classes)}" data-hop="{escape(hop.key)}" data-role="{hop.role}" '
        f'data-seen="{seen}" id="lane-{escape(flow_id)}-{escape(hop.key)}">'
        f"{head}{body}{_size_html(st)}</div>"
    )


def _journey_html(j: jr.Journey) -> str:
    f = j.flow
    ok = "ok" if j.ok else "bad"
    findings = "".join(
        f'<li class="{"ok" if x.ok else "bad"}" data-kind="{x.kind}">{escape(x.text)}</li>'
        for x in j.findings
    )
    proto = "ICMPv6" if (f.proto, f.family) == ("icmp", 6) else f.proto.upper()
    lanes = []
    prev: jr.Station | None = None
    for st in j.stations:
        text = _step_text(prev, st)
        if text:
            lanes.append(f'<div class="step">{escape(text)}</div>')
        lanes.append(_lane_html(st, f.id))
        if st.seen:
            prev = st
    return (
        f'<section class="journey {ok}" id="journey-{escape(f.id)}" data-flow="{escape(f.id)}" '
        f'data-hops="{len(j.stations)}" data-family="{f.family}"><h3>{escape(f.title)}</h3>'
        f"<p>{escape(proto)} {escape(f.src)} → {escape(f.dst)}"
        f"{', port ' + str(f.port) if f.port else ''}; backend {escape(f.backend)}</p>"
        f'<ul class="findings">{findings}</ul><div class="lanes">{"".join(lanes)}</div></section>'
    )


def render(
    state: LabState, verify_report: Any, journeys: list[jr.Journey], svg: str, topo: Any
) -> str:
    spec = state.spec
    analysis = verify_report.analysis
    verdict_ok = analysis.ok and all(j.ok for j in journeys)
    backend = spec.backend + {
        "vxlan": f" (VNI {spec.vni}, udp/{spec.port})",
        "wireguard": " ("
        + ", ".join(f"udp/{names.wireguard_port(f)}" for f in spec.families)
        + ", encrypted)",
    }.get(spec.backend, "")
    networks = ", ".join(spec.network6 if f == 6 else spec.network for f in spec.families)
    marks = {PASS: "✓ pass", FAIL: "✗ FAIL"}
    rows = "".join(
        f'<tr><td>{escape(v.name)}</td><td class="{escape(v.status)}">'
        f"{marks.get(v.status, 'skip')}</td><td>{escape(v.detail)}</td></tr>"
        for v in analysis.verdicts
    )
    counts = analysis.counts
    if spec.backend == "wireguard":
        tunnelled = f"{counts.get('wireguard', 0)} WireGuard packets"
    else:
        tunnelled = f"{counts['vxlan']} VXLAN pod packets"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    journeys_html = "".join(_journey_html(j) for j in journeys) or "<p>no journeys captured</p>"
    legend = "".join(
        f'<span class="{k}">{escape(t)}</span>'
        for k, t in (
            ("ether", "Ethernet"),
            ("ip", "IPv4 / IPv6"),
            ("udp", "UDP"),
            ("vxlan", "VXLAN / WireGuard"),
            ("sealed", "encrypted"),
            ("icmp", "ICMP / TCP"),
            ("payload", "payload"),
        )
    )
    verdict_class, verdict_word = ("ok", "PASS") if verdict_ok else ("bad", "FAIL")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flannelish verify: lab {escape(spec.name)} ({escape(spec.backend)})</title>
<style>{CSS}</style></head>
<body>
<header><h1>flannelish verify — lab {escape(spec.name)}
 <span class="verdict {verdict_class}">{verdict_word}</span></h1>
<p>backend {escape(backend)}, pod network {escape(networks)}, {len(state.nodes)} nodes,
{len(state.pods)} pods, etcd {escape(state.etcd_endpoint)}; captured {when}</p>
<nav><a href="#assertions">assertions</a><a href="#diagram">the lab</a>
<a href="#journeys">packet journeys</a></nav></header>
<main>
<section id="assertions"><h2>What crossed the underlay</h2>
<table class="assertions"><thead><tr><th>assertion</th><th>result</th><th>detail</th></tr></thead>
<tbody>{rows}</tbody></table>
<p>{analysis.frames} frames captured on the underlay bridge: {tunnelled},
{counts["pod-unencapsulated"]} unencapsulated pod packets, {counts["underlay"]} other IP,
{counts["non-ip"]} non-IP. <a href="pcaps/underlay-all.pcap">underlay-all.pcap</a></p></section>
<section id="diagram"><h2>The lab</h2>
<p>As the daemons report it (each node's <code>/status</code>): one edge per pair of nodes,
labelled with the backend; red dashed edges are peers a daemon skipped or cannot reach.</p>
<div class="diagram">{svg}</div></section>
<section id="journeys"><h2>Packet journeys</h2>
<p>One packet per flow, found in the captures of every hop it crosses (one lane per hop, top to
bottom). Each lane shows the headers scapy decoded there; <b>added here</b> marks headers that
appear at that hop (encapsulation), yellow fields changed since the previous hop. Where WireGuard
encrypts the packet only its length is left to see: that hop shows the WireGuard data message
that carried it. The bar is the packet's IP length against the interface's MTU. Each hop's pcap
opens in Wireshark.</p>
<p class="legend">{legend}<span style="border:1px dashed #dd6b20">outer (tunnel) header</span></p>
{journeys_html}</section>
<footer>flannelish verify --report; every packet above was captured in this lab, nothing is drawn
from a template.</footer>
</main></body></html>
"""
