"""Elements of one nftables set, read and written over nfnetlink (no ``nft`` process).

The daemon's anti-spoof set (``vxlan_peers``) changes with every peer that
joins or leaves.  Through the ``nft`` binary each change costs a fork and an
exec and a few ms of CPU, and each check of the set a JSON listing of every
element, parsed in Python; here an add or delete is one netlink batch (about
0.1 ms) and a listing one dump of raw addresses.  Tables, chains and rules
are still written by ``nft`` (flannelish.node.firewall): they change rarely.

The messages are nftables' own (``NFT_MSG_NEWSETELEM`` / ``DELSETELEM`` inside
an ``NFNL_MSG_BATCH_BEGIN``/``END`` pair, so a change is atomic, and
``GETSETELEM`` dumps); see docs/flannel-compat.md for the table they belong
to.  The socket belongs to the namespace it is opened in (``netns``).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from flannelish.errors import KernelError

from .monitor import NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES, element_keys
from .netns import in_netns
from .rtnl import HDR, attr, messages, nested, parse_attrs

NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM = 12, 13, 14
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_CREATE = 0x300, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO = {"ip": socket.AF_INET, "ip6": socket.AF_INET6}  # nft family name -> NFPROTO_*
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (big-endian)
# Elements per message: a batch holds several messages, so a whole set still
# changes atomically while no single message grows past a few tens of KiB.
ELEMENTS_PER_MESSAGE = 1024

PeerIP = IPv4Address | IPv6Address


class SetElements:
    """Add, delete and list the elements of address sets, in one network namespace.

    Thread-safe (one request at a time).  Errors are KernelError; a listing of
    a set or table that does not exist is None.
    """

    def __init__(self, netns: str | None = None) -> None:
        with in_netns(netns):
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
            )
        self._sock.bind((0, 0))
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def add(self, family: str, table: str, set_name: str, ips: Iterable[PeerIP]) -> None:
        """Add the elements (present ones stay: no error), all or none."""
        self._change(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, table, set_name, ips)

    def delete(self, family: str, table: str, set_name: str, ips: Iterable[PeerIP]) -> None:
        """Delete the elements, all or none (an absent element fails the batch, as in nft)."""
        self._change(NFT_MSG_DELSETELEM, 0, family, table, set_name, ips)

    def read(self, family: str, table: str, set_name: str) -> set[PeerIP] | None:
        """The set's address elements; None if the table or the set does not exist."""
        body = _head(family) + _names(table, set_name)
        mtype = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM
        out: set[PeerIP] = set()
        with self._lock:
            seq = self._send([(mtype, NLM_F_REQUEST | NLM_F_DUMP, body)])[0]
            while True:
                data = self._recv()
                for rtype, _flags, rseq, start, end in messages(data):
                    if rseq != seq:
                        continue
                    if rtype == NLMSG_DONE:
                        return out
                    if rtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, start)[0]
                        if code in (errno.ENOENT, errno.ENOTDIR):  # no table / no set
                            return None
                        if code:
                            raise _error(f"cannot list nftables set {family} {table}", code)
                        return out
                    attrs = parse_attrs(data, start + NFGENMSG.size, end)
                    out.update(element_keys(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")))

    def _change(
        self, kind: int, flags: int, family: str, table: str, set_name: str, ips: Iterable[PeerIP]
    ) -> None:
        keys = [ip.packed for ip in ips]
        if not keys:
            return
        mtype = NFNL_SUBSYS_NFTABLES << 8 | kind
        head = _head(family) + _names(table, set_name)
        batch = [(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, NFGENMSG.pack(0, 0, NFNL_SUBSYS_NFTABLES))]
        for first in range(0, len(keys), ELEMENTS_PER_MESSAGE):
            elements = b"".join(
                nested(NFTA_LIST_ELEM, nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)))
                for key in keys[first : first + ELEMENTS_PER_MESSAGE]
            )
            body = head + nested(NFTA_SET_ELEM_LIST_ELEMENTS, elements)
            batch.append((mtype, NLM_F_REQUEST | NLM_F_ACK | flags, body))
        batch.append((NFNL_MSG_BATCH_END, NLM_F_REQUEST, NFGENMSG.pack(0, 0, NFNL_SUBSYS_NFTABLES)))
        verb = "add" if kind == NFT_MSG_NEWSETELEM else "delete"
        with self._lock:
            seqs = self._send(batch)[1:-1]  # begin and end are not answered
            waiting, failure = set(seqs), 0
            while waiting:
                data = self._recv()
                for rtype, _flags, rseq, start, _end in messages(data):
                    if rtype == NLMSG_ERROR and rseq in waiting:
                        waiting.discard(rseq)
                        failure = failure or -struct.unpack_from("=i", data, start)[0]
        if failure:
            raise _error(f"cannot {verb} elements of nftables set {family} {table} {set_name}",
                         failure)  # fmt: skip

    def _send(self, batch: list[tuple[int, int, bytes]]) -> list[int]:
        parts, seqs = [], []
        for mtype, flags, body in batch:
            self._seq += 1
            seqs.append(self._seq)
            pad = b"\0" * (-len(body) % 4)
            parts.append(HDR.pack(HDR.size + len(body), mtype, flags, self._seq, 0) + body + pad)
        try:
            self._sock.send(b"".join(parts))
        except OSError as exc:
            raise _error("nftables netlink request failed", exc.errno or errno.EIO) from None
        return seqs

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(1 << 20)
        except OSError as exc:
            raise _error("nftables netlink answer lost", exc.errno or errno.EIO) from None


def _head(family: str) -> bytes:
    return NFGENMSG.pack(NFPROTO[family], 0, 0)


def _names(table: str, set_name: str) -> bytes:
    return attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + attr(
        NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0"
    )


def _error(what: str, code: int) -> KernelError:
    return KernelError(what, os.strerror(code), code)
