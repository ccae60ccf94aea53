"""Make the small recorded captures under tests/lab/journeys/ from a live lab's report.

    flannelish lab up [--backend host-gw]
    flannelish verify --report /tmp/rep
    python tests/lab/record_journeys.py /tmp/rep/pcaps tests/lab/journeys/<backend>

Keeps flows.json and hops.json as they are and, per hop, only the frames of the
report's flows (the first few of each, both directions), so the files stay small.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from flannelish.lab import journey as jr
from flannelish.lab.hops import read_pcap, write_pcap

PER_FLOW = 6


def main(src: Path, dst: Path) -> None:
    flows = jr.load_flows(src / "flows.json")
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "flows.json", dst / "flows.json")
    shutil.copyfile(src / "hops.json", dst / "hops.json")
    keys = {h.key for f in flows for h in f.hops}
    wanted = {(f.src, f.dst, f.proto) for f in flows} | {(f.dst, f.src, f.proto) for f in flows}
    sizes = {}
    for key in sorted(keys):
        kept, count = [], dict.fromkeys(wanted, 0)
        for ts, raw in read_pcap(src / f"{key}.pcap"):
            p = jr.pod_packet(ts, 0, raw)
            if p is None or (p.src, p.dst, p.proto) not in wanted:
                continue
            if count[(p.src, p.dst, p.proto)] < PER_FLOW:
                count[(p.src, p.dst, p.proto)] += 1
                kept.append((ts, raw))
        write_pcap(dst / f"{key}.pcap", kept)
        sizes[key] = len(kept)
    print(json.dumps(sizes))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
