"""A packet capture process for the underlay bridge, run inside its namespace.

    ip netns exec fl-lab-ul python -m flannelish.lab.capture --iface br0 --out cap.pcap

It opens a promiscuous packet socket on the bridge (promiscuous, so the
bridge hands it a copy of every frame it forwards between node ports, not
only frames addressed to the bridge itself), prints ``ready`` once the
socket is open, and records until its stdin closes or it gets SIGTERM, then
writes a pcap file.  Running it as its own process under `ip netns exec`
keeps scapy's interface table and the namespace switch out of the caller.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from typing import Any

READY = "ready"


def capture(iface: str, out: str, max_packets: int) -> int:
    import scapy.layers.l2  # noqa: F401  (registers Ether for the socket and the pcap writer)
    from scapy.arch.linux import L2ListenSocket
    from scapy.utils import PcapWriter

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    sock = L2ListenSocket(iface=iface, promisc=True)
    packets: list[Any] = []
    print(READY, flush=True)
    stdin_fd = sys.stdin.fileno()
    watch = [sock, stdin_fd]
    try:
        while not stopping and len(packets) < max_packets:
            try:
                ready, _, _ = select.select(watch, [], [], 0.2)
            except InterruptedError:
                continue
            if stdin_fd in ready and not os.read(stdin_fd, 4096):  # EOF: the parent is done
                watch.remove(stdin_fd)
                stopping = True
            if sock in ready:
                pkt = sock.recv()
                if pkt is not None:
                    packets.append(pkt)
        # Drain what the kernel already queued before we were told to stop.
        while len(packets) < max_packets and select.select([sock], [], [], 0)[0]:
            pkt = sock.recv()
            if pkt is not None:
                packets.append(pkt)
    finally:
        sock.close()
    with PcapWriter(out, linktype=1, sync=False) as writer:
        for pkt in packets:
            writer.write(pkt)
    print(f"captured {len(packets)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flannelish.lab.capture")
    parser.add_argument("--iface", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-packets", type=int, default=200_000)
    args = parser.parse_args(argv)
    try:
        return capture(args.iface, args.out, args.max_packets)
    except OSError as exc:
        print(f"capture: {args.iface}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
