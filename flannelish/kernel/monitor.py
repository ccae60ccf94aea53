"""Kernel change notifications: something relevant changed, so resync.

:class:`ChangeMonitor` listens on a raw rtnetlink multicast socket and only
reports *that* something changed (decoding just the fixed headers); the
reconciler then re-reads the state.  Safe to block on from a plain thread.
``only_types`` has the kernel drop every other notification before it is
queued (a socket filter), so the daemon's own writes do not wake the thread.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from flannelish.kernel.netlink import nexthop_subnet_address
from flannelish.kernel.netns import in_netns
from flannelish.kernel.rtnl import (
    AF_BRIDGE,
    IFADDRMSG,
    IFINFOMSG,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NHA_ID,
    NHMSG,
    NLA,
    RTA_DST,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELNEXTHOP,
    RTM_DELROUTE,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    RTMGRP_NEXTHOP,
    RTMSG,
    mac_str,
    messages,
    parse_attrs,
)

# What a deletion notification names: a route's destination, a neighbour's IP or an FDB MAC.
Deleted = IPv4Network | IPv6Network | IPv4Address | IPv6Address | str | None


@dataclass(frozen=True)
class Change:
    """One kernel notification, reduced to what decides whether to resync."""

    type: int
    ifindex: int = 0
    proto: int = 0
    family: int = 0  # nftables: the table's family (NFPROTO_IPV4 = 2)
    table: str = ""  # nftables: the table the change is in
    set_name: str = ""  # nftables: the set of a deleted element
    # What the entry was for, when the message says: a route's destination
    # (IPv4Network or IPv6Network), a neighbour's IP (IPv4Address or IPv6Address),
    # an FDB entry's MAC (str) or a deleted nftables set element (an IPv4 or IPv6
    # address).  Lets the daemon ignore the notifications of its own deletions.
    dst: Deleted = field(default=None, compare=False)


_SIZES = {socket.AF_INET: 4, socket.AF_INET6: 16}  # address length per family


def _route_dst(data: bytes, body: int, end: int) -> IPv4Network | IPv6Network | None:
    family, dst_len = RTMSG.unpack_from(data, body)[:2]
    raw = parse_attrs(data, body + RTMSG.size, end).get(RTA_DST)
    size = _SIZES.get(family)
    if size is None or raw is None or len(raw) != size or dst_len > size * 8:
        return None
    kind = IPv4Network if size == 4 else IPv6Network
    return kind((bytes(raw), dst_len), strict=False)


def _neigh_dst(data: bytes, body: int, end: int) -> IPv4Address | IPv6Address | str | None:
    family = NDMSG.unpack_from(data, body)[0]
    attrs = parse_attrs(data, body + NDMSG.size, end)
    if family == AF_BRIDGE and len(attrs.get(NDA_LLADDR, b"")) == 6:
        return mac_str(bytes(attrs[NDA_LLADDR]))
    raw = attrs.get(NDA_DST, b"")
    if _SIZES.get(family) == len(raw):
        return IPv4Address(bytes(raw)) if len(raw) == 4 else IPv6Address(bytes(raw))
    return None


def parse_changes(data: bytes) -> list[Change]:
    """Decode the rtnetlink messages in one datagram (headers, and what was deleted)."""
    out: list[Change] = []
    for mtype, _flags, _seq, body, end in messages(data):
        size = end - body
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and size >= IFINFOMSG.size:
            out.append(Change(mtype, ifindex=IFINFOMSG.unpack_from(data, body)[2]))
        elif mtype == RTM_DELADDR and size >= IFADDRMSG.size:
            out.append(Change(mtype, ifindex=IFADDRMSG.unpack_from(data, body)[4]))
        elif mtype == RTM_DELROUTE and size >= RTMSG.size:
            proto = RTMSG.unpack_from(data, body)[5]
            out.append(Change(mtype, proto=proto, dst=_route_dst(data, body, end)))
        elif mtype == RTM_DELNEXTHOP and size >= NHMSG.size:
            # Its routes went with it, unannounced: the id names the peer (nexthop_id).
            proto = NHMSG.unpack_from(data, body)[2]
            raw = parse_attrs(data, body + NHMSG.size, end).get(NHA_ID, b"")
            nhid = struct.unpack("=I", raw[:4])[0] if len(raw) >= 4 else 0
            out.append(Change(mtype, proto=proto, dst=nexthop_subnet_address(nhid)))
        elif mtype == RTM_NEWNEIGH and size >= NDMSG.size:
            out.append(Change(mtype, ifindex=NDMSG.unpack_from(data, body)[1]))
        elif mtype == RTM_DELNEIGH and size >= NDMSG.size:
            ifindex = NDMSG.unpack_from(data, body)[1]
            out.append(Change(mtype, ifindex=ifindex, dst=_neigh_dst(data, body, end)))
    return out


# nftables notifications (nfnetlink): deletions in a table, so a table, chain,
# rule, set or element removed behind the daemon's back is repaired at once.
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_DELETIONS = frozenset({2, 5, 8, 11, 14})  # DELTABLE DELCHAIN DELRULE DELSET DELSETELEM
NFGENMSG_SIZE = 4  # family, version, res_id
NFTA_TABLE = 1  # the table name is attribute 1 of table/chain/rule/set/element messages


NFT_MSG_DELSETELEM = 14
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3  # nested: NFTA_LIST_ELEM (1) per element
NFTA_SET_ELEM_KEY = 1  # nested: NFTA_DATA_VALUE (1), the key's bytes


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _each_attr(raw: bytes) -> list[bytes]:
    """Every attribute's payload in order (a list of elements repeats one type)."""
    out, offset = [], 0
    while offset + NLA.size <= len(raw):
        length = NLA.unpack_from(raw, offset)[0]
        if length < NLA.size:
            break
        out.append(raw[offset + NLA.size : offset + length])
        offset += (length + 3) & ~3
    return out


def element_keys(raw: bytes) -> list[IPv4Address | IPv6Address]:
    """The address keys of the elements in NFTA_SET_ELEM_LIST_ELEMENTS (others skipped)."""
    keys: list[IPv4Address | IPv6Address] = []
    for elem in _each_attr(raw):
        key = parse_attrs(parse_attrs(elem).get(NFTA_SET_ELEM_KEY, b"")).get(1, b"")
        if len(key) in (4, 16):
            keys.append(ip_address(bytes(key)))
    return keys


def parse_nft_changes(data: bytes) -> list[Change]:
    """Deletions in nftables tables, from one nfnetlink datagram.

    A deleted set element gives one Change per element whose key is an
    address (``set_name``, ``dst``), or one without ``dst`` if none is.
    """
    out: list[Change] = []
    for mtype, _flags, _seq, body, end in messages(data):
        if mtype >> 8 != NFNL_SUBSYS_NFTABLES or mtype & 0xFF not in NFT_DELETIONS:
            continue
        if end - body < NFGENMSG_SIZE:
            continue
        attrs = parse_attrs(data, body + NFGENMSG_SIZE, end)
        table, family = _name(attrs.get(NFTA_TABLE, b"")), data[body]
        keys: list[IPv4Address | IPv6Address] = []
        set_name = ""
        if mtype & 0xFF == NFT_MSG_DELSETELEM:
            set_name = _name(attrs.get(NFTA_SET_ELEM_LIST_SET, b""))
            keys = element_keys(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS, b""))
        if not keys:
            out.append(Change(mtype, family=family, table=table, set_name=set_name))
        for key in keys:
            out.append(Change(mtype, family=family, table=table, set_name=set_name, dst=key))
    return out


SO_ATTACH_FILTER = 26
_BPF_LDH_ABS = 0x28  # A = the 16-bit word at offset k, read big-endian
_BPF_JEQ_K = 0x15  # if A == k jump jt else jf
_BPF_RET_K = 0x06  # deliver k bytes (0: drop)
_NLMSG_TYPE_OFFSET = 4  # struct nlmsghdr { u32 len; u16 type; ... }
_SOCK_FILTER = struct.Struct("HBBI")


def type_filter(types: frozenset[int]) -> bytes:
    """A classic BPF program keeping the datagrams whose first message has one of
    ``types``.  The kernel sends each rtnetlink notification in its own datagram,
    so the first message is the only one (not so for nftables, which batches)."""
    wanted = sorted(types)
    n = len(wanted)
    prog = [(_BPF_LDH_ABS, 0, 0, _NLMSG_TYPE_OFFSET)]
    for i, mtype in enumerate(wanted, start=1):
        as_loaded = int.from_bytes(mtype.to_bytes(2, sys.byteorder), "big")  # host order
        prog.append((_BPF_JEQ_K, n + 1 - i, 0, as_loaded))  # match: to the accept at n + 2
    prog += [(_BPF_RET_K, 0, 0, 0), (_BPF_RET_K, 0, 0, 0xFFFFFFFF)]
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in prog)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffer may go after."""
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("@HP", len(program) // _SOCK_FILTER.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class ChangeMonitor:
    """Calls ``on_change(changes)`` for kernel notifications accepted by ``relevant``.

    Runs in its own daemon thread until stop().  A notification only triggers
    a resync; it is never applied directly, so a lost or reordered message
    costs at most one resync interval.  ``nftables=True`` listens to nftables
    deletions (parse_nft_changes) instead of rtnetlink.
    """

    def __init__(
        self,
        on_change: Callable[[list[Change]], None],
        relevant: Callable[[Change], bool],
        netns: str | None = None,
        nftables: bool = False,
        only_types: frozenset[int] | None = None,
    ) -> None:
        if only_types is not None and nftables:  # type_filter reads the first message only
            raise ValueError("only_types filters rtnetlink notifications, not nftables batches")
        self._on_change = on_change
        self._relevant = relevant
        self._parse = parse_nft_changes if nftables else parse_changes
        self._stop = threading.Event()
        protocol = NETLINK_NETFILTER if nftables else socket.NETLINK_ROUTE
        with in_netns(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
        groups |= RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE | RTMGRP_NEXTHOP
        if nftables:
            groups = 1 << (NFNLGRP_NFTABLES - 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if only_types is not None:
            attach_filter(self._sock, type_filter(only_types))
        self._sock.bind((0, groups))
        self._thread = threading.Thread(target=self._run, name="netlink-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # the periodic resync still covers us; say so once
            if not self._stop.is_set():
                logging.getLogger("flannelish.kernel.monitor").warning(
                    "kernel change notifications stopped (%s); periodic resync only", exc
                )

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # we missed messages, so resync everything
                    self._on_change([Change(0)])
                    continue
                if self._stop.is_set():
                    return
                raise
            changes = [c for c in self._parse(data) if self._relevant(c)]
            if changes:
                self._on_change(changes)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
