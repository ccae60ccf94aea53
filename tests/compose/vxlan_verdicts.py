"""Judge a capture from a compose node's eth0 with the project's own verifier.

Runs inside a node container (its venv has scapy and flannelish), fed on
stdin by tests/compose/run.sh:

    docker exec -i NODE python - --pcap /tmp/ul.pcap --node 10.97.100.11=10.244.5.0/24 ...
        < tests/compose/vxlan_verdicts.py

It reads the pcap with scapy, hands the frames to
flannelish.lab.analysis.analyze_by_family (the verifier behind `flannelish verify`)
with one expectation per IP family found among the pod IPs (the dual-stack
variant passes IPv4 and IPv6 nodes, pods and flows; each family's VXLAN must run
over that family's node addresses), prints one line per verdict and exits 1 if
any verdict failed.
"""

from __future__ import annotations

import argparse
import sys
from ipaddress import ip_address, ip_network


def _flows(text: str, proto: str):
    from flannelish.lab.analysis import Flow

    flows = set()
    for pair in filter(None, text.split(",")):
        src, dst = pair.split(">")
        flows.add(Flow(ip_address(src), ip_address(dst), proto))
    return frozenset(flows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pcap", required=True)
    parser.add_argument("--node", action="append", default=[], help="PUBLIC_IP=POD_SUBNET")
    parser.add_argument("--pods", required=True, help="comma-separated pod IPs")
    parser.add_argument("--cross", required=True, help="SRC>DST,... cross-node ICMP flows")
    parser.add_argument("--same", default="", help="SRC>DST,... same-node ICMP flows")
    parser.add_argument("--network", default="10.244.0.0/16")
    parser.add_argument("--network6", default="fd44::/48")
    parser.add_argument("--vni", type=int, default=1)
    parser.add_argument("--port", type=int, default=8472)
    parser.add_argument("--mtu", type=int, required=True, help="overlay MTU (IPv4)")
    parser.add_argument("--mtu6", type=int, default=0, help="IPv6 overlay MTU (default --mtu)")
    parser.add_argument("--underlay-mtu", type=int, default=1500)
    args = parser.parse_args()

    import scapy.layers.l2  # noqa: F401  (registers Ethernet for the pcap link type)
    from scapy.utils import rdpcap

    from flannelish.lab.analysis import FAIL, Expected, analyze_by_family

    subnets = {}
    for item in args.node:
        public, subnet = item.split("=")
        subnets[ip_address(public)] = ip_network(subnet, strict=False)
    pods = frozenset(ip_address(p) for p in args.pods.split(",") if p)
    cross, same = _flows(args.cross, "icmp"), _flows(args.same, "icmp")
    expected = [
        Expected(
            backend="vxlan",
            pod_network=ip_network(args.network6 if family == 6 else args.network),
            vni=args.vni,
            port=args.port,
            overlay_mtu=(args.mtu6 or args.mtu) if family == 6 else args.mtu,
            underlay_mtu=args.underlay_mtu,
            node_subnets={k: v for k, v in subnets.items() if k.version == family},
            pod_ips=frozenset(p for p in pods if p.version == family),
            cross_node=frozenset(f for f in cross if f.src.version == family),
            same_node=frozenset(f for f in same if f.src.version == family),
        )
        for family in sorted({p.version for p in pods})
    ]
    if not expected:
        print("no pod IPs given", file=sys.stderr)
        return 1
    result = analyze_by_family(rdpcap(args.pcap), expected)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    print(f"{result.frames} frames captured ({counts})")
    for verdict in result.verdicts:
        print(f"  {verdict.status:4}  {verdict.name}: {verdict.detail}")
    return 1 if any(v.status == FAIL for v in result.verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
