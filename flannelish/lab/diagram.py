"""`flannelish lab diagram`: the live lab as a picture.

Two steps, so the picture is testable without a lab:

* `gather(state)` reads the lab's record and asks every daemon for its
  ``/status`` (inside its node namespace, see nodeapi) and returns a plain
  `Topology`: nodes with their underlay/public address, pod subnet and VTEP
  MAC per IP family (IPv4, IPv6 or both), MTU, WireGuard public key and
  health, their pods, and one `PeerLink` per pair of nodes with the
  backend's label and anything a daemon reported about it (skipped with a
  reason, or a daemon that is down or not ready).
* `to_graph(topology)` turns it into a Graphviz graph (the `graphviz`
  package writes DOT; Debian's `dot` does the layout), `render(...)`
  returns SVG (or PNG/DOT) text or bytes.

Every element carries an ``id`` (``node-node1``, ``pod-node1-pod1``,
``peer-node1-node2``, ``underlay``) and a ``class`` in the SVG, so a browser
test (and a reader's stylesheet) can find them.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field
from html import escape
from typing import Any

from flannelish.errors import NotAvailableError
from flannelish.lab import names
from flannelish.lab.state import LabState, NodeState

DOT = "dot"
FONT = "DejaVu Sans"
COLORS = {"ok": "#2b6cb0", "skipped": "#c53030", "unhealthy": "#c05621"}
FORMATS = ("svg", "png", "dot")


@dataclass
class PodBox:
    name: str
    ip: str
    ip6: str = ""  # a dual-stack pod's IPv6 address


@dataclass
class Family:
    """One IP family of a node: what it advertises and where peers send that family."""

    version: int
    ip: str  # underlay address = the public IP peers reach it on
    public_ip: str
    subnet: str
    device: str = ""  # flannel.1, flannel-v6.1, flannel-wg, flannel-wg-v6
    vtep_mac: str = ""


@dataclass
class NodeBox:
    name: str
    ip: str  # underlay address = the public IP peers reach it on (IPv6 in an IPv6-only lab)
    public_ip: str
    subnet: str
    mtu: int
    vtep_mac: str = ""
    key: str = ""  # a WireGuard public key, shortened, when the backend has one
    health: str = "ok"  # ok | not-ready | down
    problem: str = ""
    pods: list[PodBox] = field(default_factory=list)
    families: list[Family] = field(default_factory=list)  # each family the node carries


@dataclass
class PeerLink:
    a: str
    b: str
    label: str
    status: str = "ok"  # ok | skipped | unhealthy
    detail: str = ""

    @property
    def id(self) -> str:
        return f"peer-{self.a}-{self.b}"


@dataclass
class Topology:
    lab: str
    backend: str
    network: str
    underlay: str
    bridge: str
    underlay_netns: str
    etcd: str
    vni: int = 0
    port: int = 0
    nodes: list[NodeBox] = field(default_factory=list)
    peers: list[PeerLink] = field(default_factory=list)
    families: tuple[int, ...] = (4,)  # the IP versions the lab carries

    @property
    def backend_label(self) -> str:
        if self.backend == "vxlan":
            return f"VXLAN VNI {self.vni}, udp/{self.port}"
        if self.backend == "wireguard":
            if len(self.families) == 1:
                return f"WireGuard udp/{names.wireguard_port(self.families[0])}"
            ports = ", ".join(f"udp/{names.wireguard_port(f)} (IPv{f})" for f in self.families)
            return f"WireGuard {ports}"
        return self.backend


def short_key(key: str, keep: int = 8) -> str:
    """A WireGuard public key shortened for a label: first characters and an ellipsis."""
    return key if len(key) <= keep + 1 else f"{key[:keep]}…"


def _peer_label(topo: Topology, a: NodeBox, b: NodeBox) -> str:
    if topo.backend == "vxlan":
        over = "/".join(f"IPv{f.version}" for f in a.families)
        label = f"VXLAN VNI {topo.vni} udp/{topo.port}"
        return label if over in ("", "IPv4") else f"{label} over {over}"
    if topo.backend == "host-gw":
        lines = []
        for fa, fb in zip(a.families, b.families, strict=False):
            if fa.subnet and fb.subnet:
                lines += [
                    f"{a.name}: {fb.subnet} via {fb.ip}",
                    f"{b.name}: {fa.subnet} via {fa.ip}",
                ]
        return "\n".join(["host-gw routes", *lines])
    if topo.backend == "wireguard":
        # One device per family (Mode separate), each over its own underlay family.
        pairs = list(zip(a.families, b.families, strict=False))
        if len(pairs) <= 1:
            port = names.wireguard_port(pairs[0][0].version if pairs else 4)
            ends = f"{pairs[0][0].ip} ↔ {pairs[0][1].ip}" if pairs else f"{a.ip} ↔ {b.ip}"
            return f"WireGuard udp/{port}\n{ends}"
        lines = [f"udp/{names.wireguard_port(fa.version)} {fa.ip} ↔ {fb.ip}" for fa, fb in pairs]
        return "\n".join(["WireGuard", *lines])
    return topo.backend


def _families(state: LabState, node: NodeState, view: Any) -> list[Family]:
    """The node's families from the lab record, as its daemon reports them when it answers."""
    by_family = (view.status.get("by_family") or {}) if view is not None else {}
    found = []
    for version in state.spec.families:
        ip, subnet = node.addr(version), node.subnet_of(version)
        fam = Family(version, ip, ip, subnet, vtep_mac=node.vtep_mac if version == 4 else "")
        info = by_family.get(f"ipv{version}")
        if isinstance(info, dict):
            fam.public_ip = str(info.get("public_ip") or ip)
            fam.subnet = str(info.get("subnet") or subnet)
            fam.device = str(info.get("device") or "")
            fam.vtep_mac = str(info.get("vtep_mac") or fam.vtep_mac)
        found.append(fam)
    return found


def build_topology(state: LabState, views: dict[str, Any]) -> Topology:
    """The picture's content from the lab record and each daemon's view (pure)."""
    spec = state.spec
    topo = Topology(
        lab=spec.name,
        backend=spec.backend,
        network=", ".join(spec.network6 if f == 6 else spec.network for f in spec.families),
        underlay=", ".join(
            str(names.UNDERLAY_NETWORK6 if f == 6 else names.UNDERLAY_NETWORK)
            for f in spec.families
        ),
        bridge=names.BRIDGE,
        underlay_netns=state.underlay_netns,
        etcd=state.etcd_endpoint,
        vni=spec.vni if spec.backend == "vxlan" else 0,
        port=spec.tunnel_port() if spec.backend in ("vxlan", "wireguard") else 0,
        families=spec.families,
    )
    for node in state.nodes:
        view = views.get(node.name)
        box = NodeBox(node.name, node.ip, node.ip, node.subnet, node.mtu, node.vtep_mac)
        if view is not None:
            lease = view.status.get("lease") or {}
            box.public_ip = str(lease.get("public_ip") or node.ip)
            box.subnet = str(lease.get("subnet") or node.subnet)
            key = (view.status.get("wireguard") or {}).get("public_key")
            box.key = str(key or "")
            if not view.reachable:
                box.health, box.problem = "down", view.error
            elif not view.ready:
                box.health = "not-ready"
                box.problem = "; ".join(view.failed_checks) or "not ready"
        box.families = _families(state, node, view)
        box.pods = [
            PodBox(p.name, p.ip, p.ip6 if p.ip6 != p.ip else "") for p in state.pods_of(node.name)
        ]
        topo.nodes.append(box)
    by_subnet = {f.subnet: n.name for n in topo.nodes for f in n.families} | {
        n.subnet: n.name for n in topo.nodes
    }
    skipped: dict[frozenset[str], list[str]] = {}
    for name, view in views.items():
        for subnet, reason in getattr(view, "skipped", {}).items():
            other = by_subnet.get(subnet)
            if other is not None:
                skipped.setdefault(frozenset((name, other)), []).append(
                    f"{name} skips {other}: {reason}"
                )
    health = {n.name: n for n in topo.nodes}
    for a, b in itertools.combinations(topo.nodes, 2):
        link = PeerLink(a.name, b.name, _peer_label(topo, a, b))
        why = skipped.get(frozenset((a.name, b.name)))
        if why:
            link.status, link.detail = "skipped", "; ".join(why)
        else:
            sick = [n for n in (a.name, b.name) if health[n].health != "ok"]
            if sick:
                link.status = "unhealthy"
                link.detail = ", ".join(f"{n} {health[n].health}" for n in sick)
        topo.peers.append(link)
    return topo


def gather(state: LabState) -> Topology:
    from flannelish.lab.nodeapi import all_status

    return build_topology(state, dict(all_status(state)))


def _node_label(node: NodeBox, topo: Topology) -> str:
    """A Graphviz HTML-like label: one row per fact."""
    rows = [f"<B>{escape(node.name)}</B>"]
    families = node.families or [Family(4, node.ip, node.public_ip, node.subnet, "", node.vtep_mac)]
    for fam in families:
        public = "" if fam.public_ip == fam.ip else f", public IP {escape(fam.public_ip)}"
        rows += [
            f"eth0 {escape(fam.ip)} (underlay{public})",
            f"pod subnet {escape(fam.subnet or '-')}",
        ]
        if topo.backend == "vxlan":
            device = fam.device or f"{'flannel-v6' if fam.version == 6 else 'flannel'}.{topo.vni}"
            rows.append(f"{escape(device)} VTEP {escape(fam.vtep_mac or '-')}")
        elif topo.backend == "wireguard":
            device = fam.device or names.wireguard_device(fam.version)
            rows.append(f"{escape(device)} udp/{names.wireguard_port(fam.version)}")
    rows.append(f"MTU {node.mtu or '-'} (cni0, pods)")
    if node.key:
        rows.append(f"key {escape(short_key(node.key))}")
    if node.health == "ok":
        rows.append('<FONT COLOR="#276749">daemon ready</FONT>')
    else:
        what = "daemon DOWN" if node.health == "down" else "daemon NOT READY"
        rows.append(f'<FONT COLOR="#c53030"><B>{what}</B></FONT>')
        if node.problem:
            rows.append(f'<FONT COLOR="#c53030">{escape(node.problem[:70])}</FONT>')
    cells = "".join(f'<TR><TD ALIGN="LEFT">{r}</TD></TR>' for r in rows)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1">{cells}</TABLE>>'


def to_graph(topo: Topology) -> Any:
    import graphviz

    g = graphviz.Graph(
        name=f"lab-{topo.lab}",
        engine=DOT,
        graph_attr={
            "label": f"lab {topo.lab}: backend {topo.backend_label}, pod network {topo.network}",
            "labelloc": "t",
            "fontname": FONT,
            "fontsize": "16",
            "rankdir": "TB",
            "nodesep": "0.5",
            "ranksep": "0.9",
            "bgcolor": "white",
            "id": "topology",
        },
        node_attr={"fontname": FONT, "fontsize": "11"},
        edge_attr={"fontname": FONT, "fontsize": "10"},
    )
    g.node(
        "underlay",
        f"underlay {topo.underlay}\nbridge {topo.bridge} in {topo.underlay_netns}\n"
        f"etcd {topo.etcd}",
        shape="box",
        style="rounded,filled",
        fillcolor="#edf2f7",
        id="underlay",
        **{"class": "underlay"},
    )
    for node in topo.nodes:
        bad = node.health != "ok"
        with g.subgraph(name=f"cluster_{node.name}") as c:
            c.attr(
                label=f"{node.name} ({names.netns_prefix(topo.lab)}{node.name})",
                style="rounded",
                color="#c53030" if bad else "#4a5568",
                fontname=FONT,
                id=f"cluster-{node.name}",
            )
            c.node(
                node.name,
                _node_label(node, topo),
                shape="box",
                style="rounded,filled" + (",bold" if bad else ""),
                fillcolor="#fff5f5" if bad else "#ebf8ff",
                color="#c53030" if bad else "#2b6cb0",
                id=f"node-{node.name}",
                **{"class": f"labnode health-{node.health}"},
            )
            for pod in node.pods:
                c.node(
                    pod.name,
                    f"{pod.name}\n{pod.ip or 'no IP'}" + (f"\n{pod.ip6}" if pod.ip6 else ""),
                    shape="box",
                    style="filled",
                    fillcolor="#f0fff4",
                    color="#2f855a",
                    id=f"pod-{pod.name}",
                    **{"class": "pod"},
                )
                c.edge(node.name, pod.name, label="cni0", color="#2f855a", id=f"veth-{pod.name}")
        eth0 = "\n".join(f.ip for f in node.families) or node.ip
        g.edge("underlay", node.name, label=f"eth0\n{eth0}", color="#718096")
    for link in topo.peers:
        label = link.label
        if link.status != "ok":
            label += f"\n{link.status.upper()}: {link.detail}"
        g.edge(
            link.a,
            link.b,
            label=label,
            color=COLORS[link.status],
            fontcolor=COLORS[link.status],
            style="solid" if link.status == "ok" else "dashed",
            penwidth="2",
            constraint="false",
            id=link.id,
            **{"class": f"peer peer-{link.status}"},
        )
    return g


def require_dot() -> None:
    if shutil.which(DOT) is None:
        raise NotAvailableError(
            "Graphviz's `dot` is not installed", "install Debian's graphviz (make setup)"
        )


def render(topo: Topology, fmt: str = "svg") -> bytes:
    """The picture as SVG, PNG or DOT source."""
    graph = to_graph(topo)
    if fmt == "dot":
        return str(graph.source).encode()
    require_dot()
    return bytes(graph.pipe(format=fmt))


def inline_svg(topo: Topology) -> str:
    """SVG markup to embed in an HTML page (no XML prolog or DOCTYPE)."""
    svg = render(topo, "svg").decode()
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg
