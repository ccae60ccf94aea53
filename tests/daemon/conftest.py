"""Fixtures for daemon tests: hosts on the isolated underlay, etcd on the bridge, daemons."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from flannelish.testing.etcd import EtcdMember
from flannelish.testing.underlay import Underlay

from .helpers import CONFIG, DaemonProc

PREFIX = "/coreos.com/network"


def daemon_starter(
    underlay: Underlay,
    etcd: EtcdMember,
    tmp_path,
    config: str | None,
    make: Callable[..., DaemonProc],
) -> Iterator[Callable[..., list]]:
    """start(n, *flags, config=None) -> n ready daemons made by `make` on hosts h1..hn
    (stopped at teardown).  The network config is put first: `config` of the starter
    once, a start's own `config` before that start."""
    made: list = []
    if config is not None:
        etcd.etcdctl("put", f"{PREFIX}/config", config)

    def start(n: int, *flags: str, config: str | None = None) -> list:
        if config is not None:
            etcd.etcdctl("put", f"{PREFIX}/config", config)
        daemons = []
        for i in range(1, n + 1):
            host = underlay.add_host(f"h{i}")
            d = make(host, etcd.client_url, tmp_path, *flags).start()
            made.append(d)
            daemons.append(d)
        for d in daemons:
            d.wait_ready()
        return daemons

    try:
        yield start
    finally:
        for d in made:
            d.stop()


@pytest.fixture
def start_daemons(
    underlay: Underlay, underlay_etcd: EtcdMember, tmp_path
) -> Iterator[Callable[..., list[DaemonProc]]]:
    """start_daemons(n, *flags) -> n ready daemons on hosts h1..hn (stopped at teardown)."""
    yield from daemon_starter(underlay, underlay_etcd, tmp_path, CONFIG, DaemonProc)
