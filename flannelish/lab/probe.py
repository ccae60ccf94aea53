"""A tiny TCP/UDP server and client that prove there is no NAT between pods.

The server (run inside one pod) answers every TCP connection and every UDP
datagram with the source address it sees, plus how many bytes it received.
The client (run inside another pod) prints that answer.  If the answer is
the client pod's own IP, nobody rewrote the source address on the way.

Standard library only, so it starts in a few milliseconds:

    python -m flannelish.lab.probe serve --port 7777
    python -m flannelish.lab.probe ask --proto tcp --bytes 20000 10.244.1.2 7777
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading

from flannelish.sockets import listening_socket

DEFAULT_PORT = 7777
READY = "ready"


def _serve_tcp(sock: socket.socket) -> None:
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=_answer_tcp, args=(conn, peer[0]), daemon=True).start()


def _answer_tcp(conn: socket.socket, peer: str) -> None:
    with conn:
        conn.settimeout(10)
        received = 0
        try:
            while chunk := conn.recv(65536):
                received += len(chunk)
            conn.sendall(f"{peer} {received}\n".encode())
        except OSError:
            pass


def _serve_udp(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(f"{peer[0]} {len(data)}\n".encode(), peer)


def serve(port: int) -> None:
    """Answer on IPv4 and IPv6 (each family where the pod's kernel has it)."""
    servers: list[tuple[socket.socket, socket.socket]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            tcp = listening_socket(family, socket.SOCK_STREAM, port)
            udp = listening_socket(family, socket.SOCK_DGRAM, port)
        except OSError:
            continue  # e.g. IPv6 disabled in this namespace
        servers.append((tcp, udp))
    if not servers:
        raise OSError(f"cannot listen on port {port} in any family")
    for tcp, udp in servers:
        threading.Thread(target=_serve_udp, args=(udp,), daemon=True).start()
        threading.Thread(target=_serve_tcp, args=(tcp,), daemon=True).start()
    print(READY, flush=True)
    threading.Event().wait()


def ask(host: str, port: int, proto: str, size: int, timeout: float) -> str:
    """The server's answer: '<address it saw> <bytes it received>'."""
    payload = b"x" * size
    if proto == "tcp":
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        return reply.decode().strip()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.settimeout(timeout / 4)
        # UDP may lose the first datagram while ARP resolves; retry a few times.
        for _ in range(4):
            udp.sendto(payload, (host, port))
            try:
                return udp.recvfrom(4096)[0].decode().strip()
            except TimeoutError:
                continue
    raise TimeoutError(f"no UDP answer from {host}:{port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flannelish.lab.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    srv = sub.add_parser("serve")
    srv.add_argument("--port", type=int, default=DEFAULT_PORT)
    cli = sub.add_parser("ask")
    cli.add_argument("host")
    cli.add_argument("port", type=int)
    cli.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    cli.add_argument("--bytes", type=int, default=64)
    cli.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        try:
            serve(args.port)
        except KeyboardInterrupt:
            return 0
        return 0
    try:
        print(ask(args.host, args.port, args.proto, args.bytes, args.timeout))
    except OSError as exc:
        print(f"probe: {args.proto} {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
