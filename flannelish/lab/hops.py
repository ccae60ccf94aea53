"""Capture at every hop of a packet's path at once: one process, one socket per hop.

    python -m flannelish.lab.hops --out DIR --hop KEY=NETNS:IFACE [--hop ...]

A packet socket belongs to the network namespace it was created in and keeps
capturing there, whatever namespace its process is in later.  So this process
enters each hop's namespace in turn (``/run/netns/NAME``), opens a promiscuous
``AF_PACKET`` socket on the interface (a pod's eth0, a node's cni0, flannel.1
or eth0, the underlay bridge), goes back, and then reads all of them in one
``select`` loop with the kernel's nanosecond receive timestamps.  It prints
``ready`` once every socket is open and stops when its stdin closes (or on
SIGTERM), then writes one pcap per hop (``DIR/KEY.pcap``, nanosecond pcap,
opens in Wireshark) and ``DIR/hops.json`` (interface MTU and MAC, frames per
hop, and its link type: "ether", or "raw" for a device without a link
header, such as WireGuard's TUN device, whose pcap is then LINKTYPE_RAW).
Standard library only, so it is ready in a few tens of milliseconds.

Promiscuous mode is a per-socket membership inside the lab's own namespaces;
it ends with the socket.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

READY = "ready"
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
SO_TIMESTAMPNS = 35
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
SNAPLEN = 262_144
PCAP_NS_MAGIC = 0xA1B23C4D
PCAP_US_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # IPv4 or IPv6 without a link header
LINKTYPES = {"ether": LINKTYPE_ETHERNET, "raw": LINKTYPE_RAW}
ARPHRD_RAW_IP = (0xFFFE, 519)  # ARPHRD_NONE (a TUN device: wireguard-go), ARPHRD_RAWIP
NETNS_DIR = "/run/netns"
RCVBUF = 8 << 20


def _ioctl_ifreq(sock: socket.socket, request: int, ifname: str) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("16s24s", ifname.encode(), b""))


def iface_facts(sock: socket.socket, ifname: str) -> dict[str, Any]:
    """MTU, MAC and link type of `ifname`, asked through a socket of its namespace.

    A TUN device (ARPHRD_NONE) has no link header: packet sockets get bare IP
    packets there.
    """
    mtu = struct.unpack_from("i", _ioctl_ifreq(sock, SIOCGIFMTU, ifname), 16)[0]
    ifreq = _ioctl_ifreq(sock, SIOCGIFHWADDR, ifname)
    hwtype = struct.unpack_from("H", ifreq, 16)[0]
    if hwtype in ARPHRD_RAW_IP:
        return {"mtu": mtu, "mac": "", "link": "raw"}
    return {"mtu": mtu, "mac": ":".join(f"{b:02x}" for b in ifreq[18:24]), "link": "ether"}


def open_hop(netns: str | None, ifname: str) -> tuple[socket.socket, dict[str, Any]]:
    """A promiscuous packet socket on `ifname` inside `netns` (None: our own)."""
    from flannelish.kernel.netns import current_netns_fd, setns

    home = current_netns_fd() if netns else -1
    try:
        if netns:
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((ifname, ETH_P_ALL))
            index = socket.if_nametoindex(ifname)
            mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            facts = iface_facts(sock, ifname)
        except OSError:
            sock.close()
            raise
    finally:
        if netns:
            setns(home)
            os.close(home)
    return sock, facts


def write_pcap(path: Path, frames: list[tuple[int, bytes]], link: str = "ether") -> None:
    """frames: (timestamp in ns, frame bytes); a nanosecond-resolution pcap file."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", PCAP_NS_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPES[link]))
        for ts, data in frames:
            sec, nsec = divmod(ts, 1_000_000_000)
            out.write(struct.pack("<IIII", sec, nsec, len(data), len(data)))
            out.write(data)


def pcap_link(path: Path) -> str:
    """ "ether" or "raw": the link type a pcap file declares."""
    head = Path(path).read_bytes()[:24]
    if len(head) < 24:
        return "ether"
    order = "<" if struct.unpack_from("<I", head)[0] in (PCAP_NS_MAGIC, PCAP_US_MAGIC) else ">"
    linktype = struct.unpack_from(order + "I", head, 20)[0]
    return "raw" if linktype == LINKTYPE_RAW else "ether"


def read_pcap(path: Path) -> Iterator[tuple[int, bytes]]:
    """(timestamp in ns, frame) for each record of a classic pcap (µs or ns, either byte order)."""
    raw = Path(path).read_bytes()
    if len(raw) < 24:
        return
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", raw)[0]
        if magic in (PCAP_NS_MAGIC, PCAP_US_MAGIC):
            break
    else:
        raise ValueError(f"{path}: not a pcap file")
    scale = 1 if magic == PCAP_NS_MAGIC else 1000
    offset = 24
    while offset + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack_from(order + "IIII", raw, offset)
        offset += 16
        yield sec * 1_000_000_000 + frac * scale, raw[offset : offset + incl]
        offset += incl


def _timestamp(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return int(sec * 1_000_000_000 + nsec)
    return None


def capture(hops: dict[str, tuple[str | None, str]], out: Path, max_frames: int) -> int:
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    socks: dict[int, tuple[str, socket.socket]] = {}
    facts: dict[str, dict[str, Any]] = {}
    frames: dict[str, list[tuple[int, bytes]]] = {key: [] for key in hops}
    try:
        for key, (netns, ifname) in hops.items():
            try:
                sock, facts[key] = open_hop(netns, ifname)
            except OSError as exc:
                print(f"hops: {key} ({netns}:{ifname}): {exc}", file=sys.stderr)
                return 1
            socks[sock.fileno()] = (key, sock)
        print(READY, flush=True)
        stdin_fd = sys.stdin.fileno()
        watch: list[int] = [*socks, stdin_fd]
        total = 0
        ancsize = socket.CMSG_SPACE(16)

        def drain(fd: int) -> None:
            nonlocal total
            key, sock = socks[fd]
            while total < max_frames:
                try:
                    data, anc, _flags, _addr = sock.recvmsg(SNAPLEN, ancsize, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                ts = _timestamp(anc) or 0
                frames[key].append((ts, data))
                total += 1

        while not stopping and total < max_frames:
            try:
                ready, _, _ = select.select(watch, [], [], 0.2)
            except InterruptedError:
                continue
            for fd in ready:
                if fd == stdin_fd:
                    if not os.read(stdin_fd, 4096):
                        watch.remove(stdin_fd)
                        stopping = True
                else:
                    drain(fd)
        for fd in socks:  # what the kernel queued before we were told to stop
            drain(fd)
    finally:
        for _key, sock in socks.values():
            sock.close()
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for key, (netns, ifname) in hops.items():
        write_pcap(out / f"{key}.pcap", frames[key], facts.get(key, {}).get("link", "ether"))
        manifest[key] = {
            "netns": netns,
            "iface": ifname,
            "frames": len(frames[key]),
            "pcap": f"{key}.pcap",
            **facts.get(key, {}),
        }
    (out / "hops.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"captured {sum(len(f) for f in frames.values())}", flush=True)
    return 0


def parse_hop(text: str) -> tuple[str, tuple[str | None, str]]:
    key, _, where = text.partition("=")
    netns, _, ifname = where.rpartition(":")
    if not key or not ifname or "/" in key:
        raise argparse.ArgumentTypeError(f"--hop {text!r}: expected KEY=NETNS:IFACE")
    return key, (netns or None, ifname)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flannelish.lab.hops")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--hop", action="append", type=parse_hop, required=True)
    parser.add_argument("--max-frames", type=int, default=200_000)
    args = parser.parse_args(argv)
    return capture(dict(args.hop), args.out, args.max_frames)


if __name__ == "__main__":
    sys.exit(main())
