"""systemd readiness notification: what reaches NOTIFY_SOCKET, and when nothing is sent."""

from __future__ import annotations

import socket
import uuid

import pytest

from flannelish.node.sdnotify import notify

pytestmark = pytest.mark.unit


def test_ready_reaches_a_path_socket(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is True
        assert server.recv(4096) == b"READY=1"


def test_ready_reaches_an_abstract_socket():
    name = f"flannelish-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert server.recv(4096) == b"READY=1"


def test_nothing_is_sent_outside_systemd():
    assert notify("READY=1", {}) is False


def test_a_dead_socket_is_logged_not_raised(tmp_path, caplog):
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False
    assert "cannot notify systemd" in caplog.text
