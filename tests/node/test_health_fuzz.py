"""Hypothesis fuzzing of the health server's request line and headers over real sockets.

Whatever a client sends, the server answers with one well-formed HTTP status
line (or closes the connection), never logs a warning/error or a traceback,
and keeps answering /healthz.  One server per module; each example is one
connection on loopback.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannelish.node.health import HealthServer, NodeState

pytestmark = pytest.mark.unit

STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5]\d\d [^\r\n]*\r\n")


class _Problems(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[HealthServer, _Problems]]:
    problems = _Problems()
    logger = logging.getLogger("flannelish.node.health")
    logger.addHandler(problems)
    srv = HealthServer(NodeState(node="fuzz"), "127.0.0.1", 0, request_timeout=1.0).start()
    try:
        yield srv, problems
    finally:
        srv.stop()
        logger.removeHandler(problems)


_token = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12)
_method = st.sampled_from(["GET", "HEAD", "POST", "PUT", "OPTIONS", "get", "", "GET GET"]) | _token
_path = st.sampled_from(
    ["/healthz", "/readyz", "/metrics", "/status", "/", "*", "/healthz?x=1", "//", "/%00", ""]
) | st.text(max_size=40).map(lambda t: "/" + t)
_version = (
    st.sampled_from(
        ["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.1x", "HTTP/1", "", "HTTP/9.9"]
    )
    | _token
)
_header_name = (
    st.sampled_from(["Host", "Content-Length", "Connection", "Expect", "Transfer-Encoding", "X"])
    | _token
)
_header_value = st.sampled_from(
    ["x", "-1", "99999999999999999999", "close", "keep-alive", "100-continue", "chunked", ""]
) | st.text(max_size=30)
_line_end = st.sampled_from(["\r\n", "\n", "\r", ""])


@st.composite
def _request(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    sep = draw(st.sampled_from([" ", "  ", "\t", " \x00 "]))
    line = sep.join([draw(_method), draw(_path), draw(_version)])
    headers = "".join(
        f"{draw(_header_name)}:{draw(st.sampled_from([' ', '', '  ']))}{draw(_header_value)}"
        + draw(_line_end)
        for _ in range(draw(st.integers(0, 6)))
    )
    text = line + draw(_line_end) + headers + draw(st.sampled_from(["\r\n", "\n", ""]))
    body = draw(st.binary(max_size=40))
    return text.encode("utf-8", "surrogatepass") + body


def _exchange(address: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(address, timeout=3) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the request is complete as far as it goes
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=_request())
def test_fuzz_health_request_line_and_headers(served, capfd, data):
    server, problems = served
    answer = _exchange(server.address, data)
    if answer:
        assert STATUS_LINE.match(answer), answer[:80]
    assert not problems.records, [r.getMessage() for r in problems.records]
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_fuzz_health_server_still_serves_after_the_fuzzing(served):
    server, problems = served
    url = f"http://127.0.0.1:{server.address[1]}/healthz"
    with urllib.request.urlopen(url, timeout=3) as response:
        assert response.status == 200
    assert not problems.records
