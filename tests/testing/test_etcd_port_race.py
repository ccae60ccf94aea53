"""A port taken between free_port() and etcd's bind: the fixtures start again on new ports."""

from __future__ import annotations

import socket

import pytest

import flannelish.testing.etcd as etcd_mod

pytestmark = pytest.mark.etcd


@pytest.fixture
def taken_port(monkeypatch):
    """free_port() hands out a port someone else holds, once; then real free ports."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    real = etcd_mod.free_port
    handed = []

    def racy(host="127.0.0.1"):
        if not handed:
            handed.append(port)
            return port
        return real(host)

    monkeypatch.setattr(etcd_mod, "free_port", racy)
    yield port
    holder.close()


def test_single_member_starts_again_on_new_ports(taken_port):
    member = etcd_mod.start_etcd()
    try:
        assert member.client_port != taken_port
        assert member.etcdctl("put", "k", "v").returncode == 0
    finally:
        member.destroy()


def test_cluster_starts_again_on_new_ports(taken_port):
    cluster = etcd_mod.start_etcd_cluster(3)
    try:
        assert taken_port not in [m.client_port for m in cluster.members]
    finally:
        cluster.destroy()


def test_ports_the_caller_chose_are_not_replaced(taken_port):
    with pytest.raises(RuntimeError, match="address already in use"):
        etcd_mod.start_etcd(client_port=taken_port)
