"""Judge a capture from a compose node's eth0 with the project's own verifier.

Runs inside a node container (its venv has scapy and flannelish), fed on
stdin by tests/compose/run.sh:

    docker exec -i NODE python - --pcap /tmp/ul.pcap --node 10.97.100.11=10.244.5.0/24 ...
        < tests/compose/vxlan_verdicts.py

It reads the pcap with scapy, hands the frames to
flannelish.lab.analysis.analyze (the verifier behind `flannelish verify`)
and prints one line per verdict; the exit status is 1 if any verdict failed.
"""

from __future__ import annotations

import argparse
import sys
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network


def _flows(text: str, proto: str):
    from flannelish.lab.analysis import Flow

    flows = set()
    for pair in filter(None, text.split(",")):
        src, dst = pair.split(">")
        flows.add(Flow(IPv4Address(src), IPv4Address(dst), proto))
    return frozenset(flows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pcap", required=True)
    parser.add_argument("--node", action="append", default=[], help="PUBLIC_IP=POD_SUBNET")
    parser.add_argument("--pods", required=True, help="comma-separated pod IPs")
    parser.add_argument("--cross", required=True, help="SRC>DST,... cross-node ICMP flows")
    parser.add_argument("--same", default="", help="SRC>DST,... same-node ICMP flows")
    parser.add_argument("--network", default="10.244.0.0/16")
    parser.add_argument("--vni", type=int, default=1)
    parser.add_argument("--port", type=int, default=8472)
    parser.add_argument("--mtu", type=int, required=True, help="overlay (pod) MTU")
    parser.add_argument("--underlay-mtu", type=int, default=1500)
    args = parser.parse_args()

    import scapy.layers.l2  # noqa: F401  (registers Ethernet for the pcap link type)
    from scapy.utils import rdpcap

    from flannelish.lab.analysis import FAIL, Expected, analyze

    subnets: dict[IPv4Address, IPv4Network] = {}
    for item in args.node:
        public, subnet = item.split("=")
        subnets[IPv4Address(public)] = IPv4Network(subnet, strict=False)
    expected = Expected(
        backend="vxlan",
        pod_network=ip_network(args.network),  # type: ignore[arg-type]
        vni=args.vni,
        port=args.port,
        overlay_mtu=args.mtu,
        underlay_mtu=args.underlay_mtu,
        node_subnets=subnets,
        pod_ips=frozenset(ip_address(p) for p in args.pods.split(",") if p),  # type: ignore[misc]
        cross_node=_flows(args.cross, "icmp"),
        same_node=_flows(args.same, "icmp"),
    )
    result = analyze(rdpcap(args.pcap), expected)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    print(f"{result.frames} frames captured ({counts})")
    for verdict in result.verdicts:
        print(f"  {verdict.status:4}  {verdict.name}: {verdict.detail}")
    return 1 if any(v.status == FAIL for v in result.verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
