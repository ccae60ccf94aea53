"""Listening sockets for the reachability probes (standard library only: pods start it fast)."""

from __future__ import annotations

import socket


def listening_socket(family: int, kind: int, port: int, backlog: int = 64) -> socket.socket:
    """A TCP or UDP socket bound to every address of `family` on `port` (TCP: listening)."""
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        # Its own IPv6 socket: an IPv4 client must be seen as 10.x, not ::ffff:10.x.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(backlog)
    return sock
