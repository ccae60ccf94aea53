"""Hostile answers from an "etcd" on the JSON gateway: only ever an EtcdError out of the store.

A fake member on the loopback answers every request with canned bytes (bad
base64, missing or mistyped fields, non-JSON, huge or endless bodies, a
silent watch); a real etcd cannot be made to send these.  The last test
checks, against a real etcd, that the store never loads gRPC.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from flannelish.errors import EtcdAuthError, EtcdError
from flannelish.subnet import etcdwatch
from flannelish.subnet.etcdjson import MalformedAnswer, int64, key_value, parse_object, raw
from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore, WatchResponseTooLarge

HEADER = {"revision": "5"}


def b64(s: bytes) -> str:
    return base64.b64encode(s).decode()


def http_answer(body: bytes, status: str = "200 OK", chunked: bool = False) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    if chunked:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"%x\r\n%s\r\n" % (
            len(body),
            body,
        )
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class FakeMember:
    """Answers each request with `answer(path)`: bytes to send (then keep the socket open)."""

    def __init__(self, answer: Callable[[str], bytes]) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buf:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    buf += piece
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                path = head.split(b" ")[1].decode()
                conn.sendall(self.answer(path))

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[str], bytes]], FakeMember]]:
    made: list[FakeMember] = []

    def make(answer: Callable[[str], bytes]) -> FakeMember:
        made.append(FakeMember(answer))
        return made[-1]

    yield make
    for member in made:
        member.close()


def store_for(member: FakeMember, **kw: float) -> EtcdStore:
    return EtcdStore(
        EtcdOptions.from_flags(endpoints=member.url), timeout=1.0, retry_window=0.5, **kw
    )


# -- decoding, without a socket ----------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "kv",
    [
        {"key": "not base64!", "mod_revision": "1"},
        {"key": b64(b"k"), "value": 7},
        {"key": b64(b"k"), "mod_revision": "12abc"},
        {"key": b64(b"k"), "mod_revision": "9" * 30},  # beyond int64
        {"key": b64(b"k"), "lease": True},
        {"key": b64(b"k"), "lease": [1]},
        {"key": ["k"]},
    ],
)
def test_a_bad_key_value_is_malformed(kv):
    with pytest.raises(MalformedAnswer):
        key_value(kv)


@pytest.mark.unit
def test_absent_fields_are_their_zero_values():
    kv = key_value({"key": b64(b"/k")})
    assert (kv.key, kv.value, kv.mod_revision, kv.lease_id) == ("/k", b"", 0, 0)
    assert int64({"n": 12}, "n") == 12 and raw({}, "value") == b""


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [b"", b"<html>", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 100_000, b'{"a": 1} trailing'],
)
def test_a_body_that_is_no_json_object_is_malformed(body):
    with pytest.raises(MalformedAnswer):
        parse_object(body)


# -- the store against a hostile member --------------------------------------------------

OPS: dict[str, Callable[[EtcdStore], object]] = {
    "get": lambda s: s.get("/k"),
    "list": lambda s: s.get_prefix("/p/"),
    "put": lambda s: s.put("/k", b"v"),
    "put_if": lambda s: s.put_if("/k", b"v", 0),
    "delete": lambda s: s.delete("/k", 3),
    "grant": lambda s: s.grant(10),
    "ttl": lambda s: s.ttl(1),
}

BODIES = {
    "non-JSON": http_answer(b"<html>gateway timeout</html>"),
    "a list": http_answer(b"[]"),
    "bad base64": http_answer(
        json.dumps(
            {
                "header": HEADER,
                "kvs": [{"key": "%%%", "value": "!!"}],
                "succeeded": True,
                "responses": [{}, {"response_range": {"kvs": [{"key": "%%%"}]}}],
                "ID": "x",
                "TTL": "y",
            }
        ).encode()
    ),
    "mistyped": http_answer(
        json.dumps(
            {
                "header": [],
                "kvs": {"a": 1},
                "more": "yes",
                "succeeded": 1,
                "responses": "no",
                "ID": 1.5,
                "TTL": {},
                "deleted": [],
            }
        ).encode()
    ),
    "error without fields": http_answer(b'{"nothing": 1}', "400 Bad Request"),
    "text error": http_answer(b"Not Found", "404 Not Found"),
    "chunked garbage": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
}


@pytest.mark.unit
@pytest.mark.parametrize("body", list(BODIES), ids=list(BODIES))
@pytest.mark.parametrize("op", list(OPS), ids=list(OPS))
def test_hostile_answers_give_only_etcd_errors(fake, op, body):
    member = fake(lambda path: BODIES[body])
    with store_for(member) as store:
        try:
            OPS[op](store)  # an answer may still hold all this request needs ...
        except EtcdError as exc:  # ... else one line, and nothing but an EtcdError
            assert "\n" not in str(exc)


CN_REFUSED = (
    b"CommonName of client sending a request against gateway will be ignored and not used "
    b"as expected\n"
)


@pytest.mark.unit
def test_a_common_name_refusal_the_store_did_not_expect_is_one_auth_error(fake):
    # A CN certificate never reaches the gateway (it uses gRPC); should etcd still
    # refuse one, the error says what happened.
    member = fake(lambda path: http_answer(CN_REFUSED, "400 Bad Request"))
    with store_for(member) as store, pytest.raises(EtcdAuthError) as info:
        store.get("/k")
    assert "refused the client certificate for its CommonName (CN)" in str(info.value)
    assert info.value.exit_code == 4


@pytest.mark.unit
def test_a_huge_body_is_not_read(fake):
    sent = threading.Event()

    def answer(path: str) -> bytes:
        sent.set()
        # Claims 1 GiB; a reader that believed it would wait for (or hold) all of it.
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n" + b"{" * 65536

    member = fake(answer)
    with store_for(member, max_receive_bytes=1 << 20) as store:
        t0 = time.monotonic()
        with pytest.raises(EtcdError, match="too large"):
            store.get("/k")
        assert time.monotonic() - t0 < 1.0 and sent.is_set()


@pytest.mark.unit
def test_an_endless_chunked_body_stops_at_the_cap(fake):
    piece = b"%x\r\n%s\r\n" % (65536, b" " * 65536)

    def answer(path: str) -> bytes:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + piece * 64  # 4 MiB

    member = fake(answer)
    with store_for(member, max_receive_bytes=1 << 20) as store:
        with pytest.raises(EtcdError, match="too large"):
            store.put("/k", b"v")
        # a listing reads fewer keys per page, then the key alone: still too large
        with pytest.raises(EtcdError):
            store.get_prefix("/p/")


# -- watches ------------------------------------------------------------------------------


def watch_answer(*messages: bytes) -> Callable[[str], bytes]:
    def answer(path: str) -> bytes:
        if path != "/v3/watch":
            return http_answer(b'{"header": {}}')
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + b"".join(b"%x\r\n%s\r\n" % (len(m) + 1, m + b"\n") for m in messages)

    return answer


CREATED = json.dumps({"result": {"header": HEADER, "created": True}}).encode()


@pytest.mark.unit
@pytest.mark.parametrize(
    "bad",
    [
        b"not json at all",
        b'{"result": {"events": [{"type": "PUT", "kv": {"key": "***"}}]}}',
        b'{"result": {"events": [{"type": "RENAME", "kv": {}}]}}',
        b'{"result": {"compact_revision": "lots"}}',
        b'{"result": []}',
        b'{"error": {"grpc_code": 14, "message": "etcdserver: no leader"}}',
        b'{"error": "?"}',
    ],
)
def test_a_hostile_watch_message_ends_the_watch_with_an_etcd_error(fake, bad):
    member = fake(watch_answer(CREATED, bad))
    with store_for(member) as store:
        stream = store.watch("/p/", 1)
        try:
            assert stream.next_events(2.0) == [] and stream.established
            with pytest.raises(EtcdError):
                stream.next_events(2.0)
        finally:
            stream.close()


@pytest.mark.unit
def test_a_watch_message_over_the_cap_is_a_relist_signal(fake):
    huge = json.dumps(
        {
            "result": {
                "header": HEADER,
                "events": [{"kv": {"key": b64(b"/p/k"), "value": b64(b"x" * 300_000)}}],
            }
        }
    ).encode()
    member = fake(watch_answer(CREATED, huge))
    with store_for(member, max_receive_bytes=100_000) as store:
        stream = store.watch("/p/", 1)
        try:
            stream.next_events(2.0)
            with pytest.raises(WatchResponseTooLarge):
                stream.next_events(2.0)
        finally:
            stream.close()


@pytest.mark.unit
def test_a_silent_member_that_stops_answering_ends_the_watch(fake, monkeypatch):
    monkeypatch.setattr(etcdwatch, "IDLE_PROBE_S", 0.3)
    monkeypatch.setattr(etcdwatch, "PROBE_TIMEOUT_S", 0.3)
    frozen = threading.Event()

    def answer(path: str) -> bytes:
        if path == "/v3/watch":
            return watch_answer(CREATED)(path)
        if frozen.is_set():
            time.sleep(5)  # a frozen process: the connection opens, nothing answers
        return http_answer(b'{"header": {}}')

    member = fake(answer)
    with store_for(member) as store:
        stream = store.watch("/p/", 1)
        try:
            stream.next_events(1.0)
            assert stream.next_events(1.0) == []  # idle but alive: probes answered
            frozen.set()
            t0 = time.monotonic()
            with pytest.raises(EtcdError, match="timed out"):
                while time.monotonic() - t0 < 3:
                    stream.next_events(0.2)
        finally:
            stream.close()


@pytest.mark.unit
def test_close_from_another_thread_ends_a_waiting_watch_at_once(fake):
    member = fake(watch_answer(CREATED))
    with store_for(member) as store:
        stream = store.watch("/p/", 1)
        assert stream.next_events(1.0) == [] and stream.established
        # The caller's thread reads the socket itself: no reader thread per watch.
        assert not [t for t in threading.enumerate() if t.name == "etcd-watch"]
        threading.Timer(0.2, stream.close).start()
        t0 = time.monotonic()
        with pytest.raises(EtcdError, match="watch closed"):
            stream.next_events(10.0)
        assert time.monotonic() - t0 < 2
        with pytest.raises(EtcdError, match="watch closed"):  # and it stays ended
            stream.next_events(0.1)


# -- no gRPC in the process -------------------------------------------------------------

NO_GRPC = """
import sys
import flannelish.cli.daemon
from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore
with EtcdStore(EtcdOptions.from_flags(endpoints=sys.argv[1])) as store:
    store.put("/p/k", b"v")
    store.get_prefix("/p/")
    store.watch("/p/", 1).close()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "pyetcd", "google"))
print(",".join(loaded) or "none")
"""


@pytest.mark.etcd
def test_the_daemon_and_the_store_never_load_grpc(etcd):
    out = subprocess.run(
        [sys.executable, "-c", NO_GRPC, etcd.client_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "none", out.stdout
