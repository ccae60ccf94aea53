"""Make the small recorded captures under tests/lab/journeys/ from a live lab's report.

    flannelish lab up [--backend host-gw|wireguard] [--ip-family dual|ipv6]
    flannelish verify --report /tmp/rep
    python tests/lab/record_journeys.py /tmp/rep/pcaps tests/lab/journeys/<name>

Keeps flows.json and hops.json as they are and, per hop, only the frames of the
report's flows (the first few of each, both directions), the frames each journey
follows, and on WireGuard's encrypted hops every data message between the flow's
nodes from the moment the packet entered the tunnel device up to the one the
journey chose (the others it had to pass over), so the files stay small and the
journeys built from them are the same.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from flannelish.lab import journey as jr
from flannelish.lab.hops import pcap_link, read_pcap, write_pcap
from flannelish.lab.report import build_journeys

PER_FLOW = 6
OTHER_SEALED = 12  # WireGuard data messages of other node pairs and directions, as decoys


def main(src: Path, dst: Path, port: int) -> None:
    flows = jr.load_flows(src / "flows.json")
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "flows.json", dst / "flows.json")
    shutil.copyfile(src / "hops.json", dst / "hops.json")
    keep: dict[str, set[int]] = {h.key: set() for f in flows for h in f.hops}
    for j in build_journeys(src, port):
        plain = None
        for st in j.stations:
            if st.packet is None:
                continue
            keep[st.hop.key].add(st.packet.index)
            if not st.packet.encrypted:
                plain = st.packet
            elif plain is not None:
                ends = (j.flow.src_node_ip, j.flow.dst_node_ip)
                frames = list(read_pcap(src / f"{st.hop.key}.pcap"))
                for p in jr.packets_of(frames, st.hop.link, j.flow.tunnel_port or port):
                    if p.encrypted and (p.src, p.dst) == ends and plain.ts <= p.ts <= st.packet.ts:
                        keep[st.hop.key].add(p.index)
    wanted = {(f.src, f.dst, f.proto) for f in flows} | {(f.dst, f.src, f.proto) for f in flows}
    # Each family's tunnel port (dual-stack WireGuard: 51820 and 51821), the given one first.
    ports = list(dict.fromkeys([port, *(f.tunnel_port or port for f in flows)]))
    sizes = {}
    for key in sorted(keep):
        link = pcap_link(src / f"{key}.pcap")
        kept, count, decoys = [], dict.fromkeys(wanted, 0), 0
        for index, (ts, raw) in enumerate(read_pcap(src / f"{key}.pcap"), start=1):
            found = [jr.pod_packet(ts, index, raw, link, each) for each in ports]
            p = next((q for q in found if q is not None and q.encrypted), found[0])
            mine = p is not None and (p.src, p.dst, p.proto) in wanted
            if mine and count[(p.src, p.dst, p.proto)] < PER_FLOW:
                count[(p.src, p.dst, p.proto)] += 1
                keep[key].add(index)
            elif p is not None and p.encrypted and keep[key] and decoys < OTHER_SEALED:
                decoys += 1
                keep[key].add(index)
            if index in keep[key]:
                kept.append((ts, raw))
        write_pcap(dst / f"{key}.pcap", kept, link)
        sizes[key] = len(kept)
    print(json.dumps(sizes))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8472)
