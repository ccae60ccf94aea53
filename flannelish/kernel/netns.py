"""Network namespaces, entered per thread: the one helper of the daemon and the CNI plugin.

A netlink socket stays bound to the namespace of the thread that opened it,
and /proc/sys/net and child processes follow the calling thread's namespace.
So both users enter a namespace with setns(2) on the calling thread only
(Python 3.11 has no os.setns, hence ctypes): the daemon's CNI worker threads
serve callers from different namespaces at once, and no process forks.

:func:`in_netns` raises when the thread cannot return to its own namespace:
a thread left behind would quietly program the wrong namespace from then on.
Standard library only (the CNI plugin imports this on every call).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from flannelish.errors import KernelError

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_libc = None


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace `fd`; OSError on failure."""
    global _libc
    import ctypes  # only when a namespace is entered: not on the plugin's fast path

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def current_netns_fd() -> int:
    """An fd of the calling thread's own network namespace (to come back to)."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def same_netns(fd_a: int, fd_b: int) -> bool:
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_netns(path: str) -> int:
    """An fd of the network namespace at `path` (a bind mount or /proc/<pid>/ns/net).

    KernelError when it is missing or not a network namespace; it is never
    created (a mistyped name must fail, not make a new empty namespace).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(
            f"network namespace {path} not found", exc.strerror or str(exc), exc.errno
        ) from None
    try:
        with in_netns(fd):  # entering it is the test that it is one
            pass
    except KernelError as exc:
        os.close(fd)
        if exc.errno != errno.EINVAL:  # EINVAL: setns(2) on an fd of anything else
            raise
        raise KernelError(
            f"{path} is not a network namespace", "not a network namespace", errno.EINVAL
        ) from None
    return fd


@contextlib.contextmanager
def in_netns(netns: str | int | None) -> Iterator[None]:
    """Run the block with the calling thread inside `netns`, then come back.

    `netns` is a name under /run/netns, an open namespace fd (the caller keeps
    owning it) or None (stay where we are).  KernelError when the namespace
    cannot be entered, or when the thread cannot return to its own one.
    """
    if netns is None:
        yield
        return
    owned: int | None = None  # an fd we opened ourselves (by name) and must close
    if isinstance(netns, str):
        fd = owned = _open_named(netns)
    else:
        fd = netns
    what = repr(netns) if owned is not None else f"(fd {netns})"
    home = current_netns_fd()
    try:
        try:
            setns(fd)
        except OSError as exc:
            raise KernelError(
                f"cannot enter network namespace {what}", exc.strerror, exc.errno
            ) from None
        try:
            yield
        finally:
            try:
                setns(home)
            except OSError as exc:
                raise KernelError(
                    f"cannot return from network namespace {what}; this thread stays there",
                    exc.strerror,
                    exc.errno,
                ) from exc
    finally:
        os.close(home)
        if owned is not None:
            os.close(owned)


def _open_named(name: str) -> int:
    try:
        return os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(
            f"network namespace {name!r} not found", exc.strerror, exc.errno
        ) from None
