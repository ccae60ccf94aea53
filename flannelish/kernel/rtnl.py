"""The rtnetlink wire format and one socket, on the standard library (socket + struct).

This module is the wire: message and attribute layouts, packing and
parsing, decoded messages (:class:`LinkMsg`, :class:`AddrMsg`,
:class:`NeighMsg`, :class:`RouteMsg`) and :class:`RtnlSocket`, which sends a
request and collects its replies, raising the kernel's refusals as
:class:`RtnlError` (an OSError carrying the kernel's errno).  The operations
built from it are :class:`flannelish.kernel.rawnetlink.RawNetlink`'s.  Why
flannelish packs these messages itself instead of using pyroute2: see the
README (measured: faster per entry, less memory, no 150 ms import in the CNI
plugin, which imports this module on every call; so nothing beyond the
standard library, not even dataclasses).

A socket is bound to the network namespace of the thread that creates it
(see :mod:`flannelish.kernel.netns`).  Formats: linux/netlink.h,
linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/neighbour.h.
"""

from __future__ import annotations

import _thread  # threading.Lock without importing threading (plugin start-up)
import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence

# netlink header flags and message types
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106  # Linux 5.3
NLA_F_NESTED = 0x8000
# multicast groups (bind) for change notifications
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
RTMGRP_NEXTHOP = 1 << 31  # RTNLGRP_NEXTHOP (32): the last group a bind mask can name

AF_INET, AF_INET6, AF_BRIDGE = socket.AF_INET, socket.AF_INET6, 7

# link attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_EXT_MASK = 12, 18, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BR_FORWARD_DELAY, IFLA_BR_AGEING_TIME, IFLA_BR_STP_STATE = 1, 4, 5
IFLA_BRPORT_MODE = 4  # hairpin
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT, IFLA_VXLAN_GBP = 7, 15, 23
IFLA_VXLAN_LOCAL6 = 17
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP, IFF_PROMISC = 0x1, 0x100

# address, neighbour and route attributes
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
NDA_DST, NDA_LLADDR = 1, 2
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
RT_TABLE_MAIN, RTPROT_BOOT = 254, 3
RTN_UNSPEC, RTN_UNICAST, RTN_BLACKHOLE = 0, 1, 6
RTM_F_FIB_MATCH = 0x2000  # RTM_GETROUTE: answer with the matching table entry (Linux 4.13)
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 0x4
RTA_NH_ID = 30  # a route through a nexthop object (linux/nexthop.h)
NHA_ID, NHA_OIF, NHA_GATEWAY = 1, 5, 6

HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
NHMSG = struct.Struct("=BBBBI")  # nhmsg: family, scope, protocol, reserved, flags
NLA = struct.Struct("=HH")  # rtattr: length, type
U32 = struct.Struct("=I")
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # CAP_ACK: error answers leave out the request
SO_RCVBUFFORCE = 33  # not in the socket module
RCVBUF = 1 << 22  # what we ask for (root may exceed net.core.rmem_max)
BATCH_BYTES = 1 << 16  # requests per datagram of request_many, at most
BATCH_MAX = 1024


class RtnlError(OSError):
    """The kernel refused a request; ``errno`` is the kernel's error number."""


def is_missing(exc: OSError) -> bool:
    """True for "already gone" errors, which a delete may treat as success."""
    return exc.errno in (errno.ENOENT, errno.ESRCH, errno.ENODEV)


# -- attributes ------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    length = NLA.size + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, U32.pack(value))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def parse_attrs(data: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes in data[offset:end], by type (nested flag stripped)."""
    if end is None:
        end = len(data)
    attrs: dict[int, bytes] = {}
    while offset + NLA.size <= end:
        length, kind = NLA.unpack_from(data, offset)
        if length < NLA.size:
            break
        attrs[kind & 0x3FFF] = data[offset + NLA.size : offset + length]
        offset += (length + 3) & ~3
    return attrs


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return IFINFOMSG.pack(family, 0, index, flags, change)


def messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body start, body end) of each message in one datagram."""
    offset = 0
    while offset + HDR.size <= len(data):
        length, mtype, flags, seq, _pid = HDR.unpack_from(data, offset)
        if length < HDR.size:
            return
        yield mtype, flags, seq, offset + HDR.size, offset + length
        offset += (length + 3) & ~3


# -- decoded messages (fixed header fields + attributes) ---------------------------------


class Message:
    __slots__ = ("attrs",)
    attrs: dict[int, bytes]

    def u32(self, kind: int) -> int:
        raw = self.attrs.get(kind)
        return int(U32.unpack(raw[:4])[0]) if raw and len(raw) >= 4 else 0

    def text(self, kind: int) -> str:
        return self.attrs.get(kind, b"").rstrip(b"\0").decode()


class LinkMsg(Message):
    __slots__ = ("flags", "index")

    def __init__(self, index: int, flags: int, attrs: dict[int, bytes]) -> None:
        self.index, self.flags, self.attrs = index, flags, attrs

    @property
    def name(self) -> str:
        return self.text(IFLA_IFNAME)

    @property
    def mtu(self) -> int:
        return self.u32(IFLA_MTU)

    @property
    def kind(self) -> str:
        return self.linkinfo()[0]

    def linkinfo(self) -> tuple[str, dict[int, bytes]]:
        """(kind, IFLA_INFO_DATA attributes) of a link with linkinfo, else ("", {})."""
        raw = self.attrs.get(IFLA_LINKINFO)
        if not raw:
            return "", {}
        info = parse_attrs(raw)
        kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        return kind, parse_attrs(info.get(IFLA_INFO_DATA, b""))


class AddrMsg(Message):
    __slots__ = ("family", "index", "prefixlen")

    def __init__(self, family: int, index: int, prefixlen: int, attrs: dict[int, bytes]) -> None:
        self.family, self.index, self.prefixlen, self.attrs = family, index, prefixlen, attrs

    @property
    def address(self) -> bytes:
        """The local address (IFA_LOCAL, else IFA_ADDRESS); b"" if neither."""
        return self.attrs.get(IFA_LOCAL) or self.attrs.get(IFA_ADDRESS) or b""


class NeighMsg(Message):
    __slots__ = ("family", "flags", "ifindex", "state")

    def __init__(
        self, family: int, ifindex: int, state: int, flags: int, attrs: dict[int, bytes]
    ) -> None:
        self.family, self.ifindex, self.state, self.flags = family, ifindex, state, flags
        self.attrs = attrs


class RouteMsg(Message):
    __slots__ = ("dst_len", "family", "flags", "proto", "scope", "table", "type")

    def __init__(self, family: int, dst_len: int, table: int, proto: int, scope: int,
                 type: int, flags: int, attrs: dict[int, bytes]) -> None:  # fmt: skip
        self.family, self.dst_len, self.table, self.proto = family, dst_len, table, proto
        self.scope, self.type, self.flags, self.attrs = scope, type, flags, attrs


class NexthopMsg(Message):
    __slots__ = ("family", "flags", "proto")

    def __init__(self, family: int, proto: int, flags: int, attrs: dict[int, bytes]) -> None:
        self.family, self.proto, self.flags, self.attrs = family, proto, flags, attrs


Reply = tuple[int, bytes, int, int]  # type, datagram, body start, body end


def link_msgs(replies: list[Reply]) -> Iterator[LinkMsg]:
    for kind, data, start, end in replies:
        if kind == RTM_NEWLINK:
            _fam, _type, index, flags, _change = IFINFOMSG.unpack_from(data, start)
            yield LinkMsg(index, flags, parse_attrs(data, start + IFINFOMSG.size, end))


def addr_msgs(replies: list[Reply], ifindex: int | None = None) -> Iterator[AddrMsg]:
    """Decoded addresses, optionally only those of device `ifindex`."""
    for kind, data, start, end in replies:
        if kind == RTM_NEWADDR:
            family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(data, start)
            if ifindex is not None and index != ifindex:
                continue  # other devices' addresses: skip before decoding attributes
            attrs = parse_attrs(data, start + IFADDRMSG.size, end)
            yield AddrMsg(family, index, prefixlen, attrs)


def route_msgs(replies: list[Reply]) -> Iterator[RouteMsg]:
    """Decoded routes; `table` is resolved from RTA_TABLE (tables above 255 need it)."""
    for kind, data, start, end in replies:
        if kind != RTM_NEWROUTE:
            continue
        family, dst_len, _src, _tos, table, proto, scope, rtype, flags = RTMSG.unpack_from(
            data, start
        )
        attrs = parse_attrs(data, start + RTMSG.size, end)
        if RTA_TABLE in attrs:
            table = U32.unpack(attrs[RTA_TABLE][:4])[0]
        yield RouteMsg(family, dst_len, table, proto, scope, rtype, flags, attrs)


def nexthop_msgs(replies: list[Reply], skip_proto: int | None = None) -> Iterator[NexthopMsg]:
    """Decoded nexthops, except those of protocol `skip_proto` (not decoded at all)."""
    for kind, data, start, end in replies:
        if kind == RTM_NEWNEXTHOP:
            family, _scope, proto, _resvd, flags = NHMSG.unpack_from(data, start)
            if proto != skip_proto:
                yield NexthopMsg(family, proto, flags, parse_attrs(data, start + NHMSG.size, end))


def neigh_msgs(replies: list[Reply], ifindex: int = 0) -> Iterator[NeighMsg]:
    """Decoded neighbour/FDB entries, optionally only those of device `ifindex`."""
    for kind, data, start, end in replies:
        if kind != RTM_NEWNEIGH:
            continue
        family, index, state, flags, _type = NDMSG.unpack_from(data, start)
        if ifindex and index != ifindex:
            continue  # other devices' entries: skip before decoding attributes
        yield NeighMsg(family, index, state, flags, parse_attrs(data, start + NDMSG.size, end))


# -- the socket ------------------------------------------------------------------------


class RtnlSocket:
    """One NETLINK_ROUTE socket, bound to the creating thread's network namespace.

    Thread-safe: one request at a time.  Kernel refusals raise RtnlError.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:  # past net.core.rmem_max: needs CAP_NET_ADMIN (the daemon, the tests)
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        with contextlib.suppress(OSError):  # Linux 4.3
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        # request_many: every request of one datagram may fail, and the kernel
        # queues all its answers before send() returns; each answer takes about
        # 1 KiB of the receive buffer (socket buffer overhead), so a datagram
        # carries no more requests than the buffer holds answers.
        rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.batch_max = max(16, min(BATCH_MAX, rcvbuf // 2048))
        self._sock.bind((0, 0))
        self._seq = 0
        self._lock = _thread.allocate_lock()

    def close(self) -> None:
        self._sock.close()

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._sock.send(HDR.pack(HDR.size + len(body), mtype, flags, self._seq, 0) + body)
        return self._seq

    def _replies(self, seq: int, until_one: bool = False) -> Iterator[Reply]:
        """The replies to `seq` until DONE/ACK (or, `until_one`, the first single one)."""
        while True:
            data = self._sock.recv(1 << 20)
            for mtype, flags, mseq, start, end in messages(data):
                if mseq != seq:
                    continue  # a late answer to an earlier request
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, start)[0]
                    if code:
                        raise RtnlError(code, os.strerror(code))
                    return  # plain ACK
                yield mtype, data, start, end
                if until_one and not flags & NLM_F_MULTI:
                    return

    def request(self, mtype: int, body: bytes, flags: int = 0) -> None:
        """Send one change and wait for its ACK (raises RtnlError on refusal)."""
        with self._lock:
            seq = self._send(mtype, flags | NLM_F_REQUEST | NLM_F_ACK, body)
            for _ in self._replies(seq):
                pass

    def request_many(self, requests: Sequence[tuple[int, bytes, int]]) -> list[int]:
        """Send many changes, (type, body, flags) each, packed into few datagrams.

        Returns the kernel's errno per request (0: done), in order.  The kernel
        handles the requests of one datagram one after the other and answers
        every failed one whether or not it asked for an ACK, so only the last
        request of a datagram asks for one: when that ACK is in, each request
        before it has its error or succeeded.  One send and one or a few
        receives per datagram, instead of one round trip per request.
        """
        results = [0] * len(requests)
        with self._lock:
            start = 0
            while start < len(requests):
                end, size = start, 0
                while end < len(requests) and end - start < self.batch_max:
                    size += HDR.size + len(requests[end][1])
                    if size > BATCH_BYTES and end > start:
                        break
                    end += 1
                self._send_batch(requests, start, end, results)
                start = end
        return results

    def _send_batch(
        self, requests: Sequence[tuple[int, bytes, int]], start: int, end: int, results: list[int]
    ) -> None:
        first = self._seq + 1
        parts = []
        for i in range(start, end):
            mtype, body, flags = requests[i]
            self._seq += 1
            flags |= NLM_F_REQUEST | (NLM_F_ACK if i == end - 1 else 0)
            pad = b"\0" * (-len(body) % 4)
            parts.append(HDR.pack(HDR.size + len(body), mtype, flags, self._seq, 0) + body + pad)
        last = self._seq
        try:
            self._sock.send(b"".join(parts))
        except OSError as exc:  # nothing of this datagram was handled
            results[start:end] = [exc.errno or errno.EIO] * (end - start)
            return
        answered: set[int] = set()
        try:
            while True:
                data = self._sock.recv(1 << 20)
                if self._errors(data, first, last, start, results, answered):
                    return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
        # The receive buffer overflowed and some answers were lost: which requests
        # failed is unknown.  What is still queued is read; every request without
        # an answer is reported as ENOBUFS (the caller retries it on its own).
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                data = self._sock.recv(1 << 20, socket.MSG_DONTWAIT)
                if self._errors(data, first, last, start, results, answered):
                    return
        for seq in range(first, last + 1):
            if seq not in answered:
                results[start + seq - first] = errno.ENOBUFS

    @staticmethod
    def _errors(
        data: bytes, first: int, last: int, start: int, results: list[int], answered: set[int]
    ) -> bool:
        """Record the answers in `data` to seq first..last; True once `last` is answered."""
        for mtype, _flags, mseq, body, _end in messages(data):
            if mtype != NLMSG_ERROR or not first <= mseq <= last:
                continue  # a late answer to an earlier request
            results[start + mseq - first] = -struct.unpack_from("=i", data, body)[0]
            answered.add(mseq)
            if mseq == last:
                return True
        return False

    def get(self, mtype: int, body: bytes) -> list[Reply]:
        """A single-object request (no dump): its replies."""
        with self._lock:
            seq = self._send(mtype, NLM_F_REQUEST, body)
            return list(self._replies(seq, until_one=True))

    def dump(self, mtype: int, body: bytes) -> list[Reply]:
        with self._lock:
            seq = self._send(mtype, NLM_F_REQUEST | NLM_F_DUMP, body)
            return list(self._replies(seq))
