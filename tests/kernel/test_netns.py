"""The one netns helper: enters per thread, comes back, and raises when it cannot."""

from __future__ import annotations

import os

import pytest

from flannelish.errors import KernelError
from flannelish.kernel import netns
from flannelish.kernel.netns import current_netns_fd, in_netns, open_netns, same_netns


def _here() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.mark.unit
def test_raises_when_the_thread_cannot_return(monkeypatch):
    calls = []

    def fake_setns(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the way back
            raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(netns, "setns", fake_setns)
    fd = current_netns_fd()
    try:
        with pytest.raises(KernelError, match="cannot return") as err, in_netns(fd):
            pass
    finally:
        os.close(fd)
    assert err.value.errno == 1 and len(calls) == 2


@pytest.mark.unit
def test_a_failed_return_wins_over_the_blocks_own_error(monkeypatch):
    calls = []

    def fake_setns(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(22, "Invalid argument")

    monkeypatch.setattr(netns, "setns", fake_setns)
    fd = current_netns_fd()
    try:
        with pytest.raises(KernelError, match="cannot return") as err, in_netns(fd):
            raise ValueError("the block failed")
    finally:
        os.close(fd)
    assert isinstance(err.value.__context__.__context__, ValueError)  # the chain keeps it


@pytest.mark.unit
def test_a_missing_namespace_raises_and_is_never_created():
    name = f"flannelish-no-such-netns-{os.getpid()}"
    with pytest.raises(KernelError, match="not found"), in_netns(name):
        pass
    assert not os.path.exists(f"/run/netns/{name}")


@pytest.mark.unit
def test_none_stays_in_the_current_namespace():
    before = _here()
    with in_netns(None):
        assert _here() == before


@pytest.mark.unit
def test_open_netns_refuses_a_file_that_is_not_a_namespace(tmp_path):
    path = tmp_path / "plain"
    path.write_text("")
    with pytest.raises(KernelError, match="not a network namespace") as err:
        open_netns(str(path))
    assert err.value.details == "not a network namespace"
    with pytest.raises(KernelError, match="not found") as err:
        open_netns(str(tmp_path / "missing"))
    assert err.value.details == "No such file or directory"


def test_enters_by_name_and_by_fd_and_comes_back(netns_factory):
    name = netns_factory.create("ns")
    home = _here()
    target = os.stat(f"/run/netns/{name}").st_ino
    with in_netns(name):
        assert _here() == target
    assert _here() == home
    fd = open_netns(f"/run/netns/{name}")
    try:
        with in_netns(fd):
            assert _here() == target
        assert _here() == home
        own = current_netns_fd()
        assert not same_netns(fd, own)
        os.close(own)
    finally:
        os.close(fd)


def test_comes_back_when_the_block_raises(netns_factory):
    name = netns_factory.create("ns")
    home = _here()
    with pytest.raises(RuntimeError), in_netns(name):
        raise RuntimeError("boom")
    assert _here() == home
