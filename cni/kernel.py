"""The thin kernel layer: namespaces, links, addresses, routes, sysctls.

Every netlink call of the plugin goes through :class:`Netlink` (one socket
bound to one network namespace) so that the ADD/DEL logic reads as steps and
errors come back as KernelError naming the operation.

Namespaces are entered per *thread* with setns(2) (Python 3.11 has no
os.setns, hence ctypes): a netlink socket stays bound to the namespace it was
created in, /proc/sys/net and child processes follow the calling thread's
namespace.  This is what lets the daemon's worker threads serve callers from
any namespace concurrently, and the in-process path use the very same code.
This module imports pyroute2, so only the worker side imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flannelish.errors import CniCode, KernelError

from .protocol import CniError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def current_netns_fd() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def entered(fd: int | None) -> Iterator[None]:
    """Run the block with the calling thread inside netns `fd` (None: stay)."""
    if fd is None:
        yield
        return
    back = current_netns_fd()
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(back)
    finally:
        os.close(back)


def open_netns(path: str) -> int:
    """An fd for the netns at `path`; CniError when it is missing or not a netns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CniError(
            CniCode.INTERNAL, f'failed to open netns "{path}": {exc.strerror or exc}'
        ) from None
    try:
        with entered(fd):
            pass
    except OSError:
        os.close(fd)
        raise CniError(
            CniCode.INTERNAL, f'failed to open netns "{path}": not a network namespace'
        ) from None
    return fd


def same_netns(fd_a: int, fd_b: int) -> bool:
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@dataclass
class LinkInfo:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    master: int
    promisc: bool
    up: bool
    peer_index: int  # IFLA_LINK: for a veth, the peer's index in the other netns
    hairpin: bool | None


def _kernel_error(what: str, exc: NetlinkError) -> KernelError:
    return KernelError(f"{what}: {os.strerror(exc.code) if exc.code > 0 else exc}")


class Netlink:
    """A netlink socket bound to one namespace (fd None: the thread's current one)."""

    def __init__(self, netns_fd: int | None = None) -> None:
        with entered(netns_fd):
            self.ipr = IPRoute()
        self.netns_fd = netns_fd

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sysctl(self, key: str, value: str) -> None:
        """Write /proc/sys/<key> in this socket's namespace (best effort if absent)."""
        path = "/proc/sys/" + key.replace(".", "/")
        with (
            entered(self.netns_fd),
            contextlib.suppress(FileNotFoundError),
            open(path, "w") as fh,
        ):
            fh.write(value)

    def read_sysctl(self, key: str) -> str:
        with entered(self.netns_fd), open("/proc/sys/" + key.replace(".", "/")) as fh:
            return fh.read().strip()

    # links -----------------------------------------------------------------
    def link(self, name: str) -> LinkInfo | None:
        try:
            msgs = self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise _kernel_error(f"look up link {name}", exc) from None
        return self._info(msgs[0]) if msgs else None

    def link_by_index(self, index: int) -> LinkInfo | None:
        try:
            msgs = self.ipr.link("get", index=index)
        except NetlinkError:
            return None
        return self._info(msgs[0]) if msgs else None

    @staticmethod
    def _info(msg: Any) -> LinkInfo:
        linkinfo = msg.get("IFLA_LINKINFO")
        kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo else ""
        protinfo = msg.get("IFLA_PROTINFO")
        hairpin = None
        if protinfo is not None:
            mode = protinfo.get("IFLA_BRPORT_MODE")
            hairpin = bool(mode) if mode is not None else None
        return LinkInfo(
            index=msg["index"],
            name=msg.get("IFLA_IFNAME"),
            kind=kind or "",
            mac=(msg.get("IFLA_ADDRESS") or "").lower(),
            mtu=msg.get("IFLA_MTU") or 0,
            master=msg.get("IFLA_MASTER") or 0,
            promisc=bool(msg.get("IFLA_PROMISCUITY")),
            up=bool(msg["flags"] & 1),
            peer_index=msg.get("IFLA_LINK") or 0,
            hairpin=hairpin,
        )

    def create_bridge(self, name: str, mtu: int, mac: str) -> None:
        try:
            self.ipr.link(
                "add",
                ifname=name,
                kind="bridge",
                mtu=mtu,
                address=mac,
                br_stp_state=0,
                br_forward_delay=1500,
                br_ageing_time=30000,
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # a concurrent ADD created it first
                raise _kernel_error(f"create bridge {name}", exc) from None

    def set_link(self, index: int, what: str, **attrs: Any) -> None:
        try:
            self.ipr.link("set", index=index, **attrs)
        except NetlinkError as exc:
            raise _kernel_error(what, exc) from None

    def set_promisc(self, index: int, on: bool) -> None:
        flag = 0x100  # IFF_PROMISC
        self.set_link(index, "set promiscuous mode", flags=flag if on else 0, change=flag)

    def create_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int, mac: str | None):
        peer_attrs: dict[str, Any] = {"ifname": peer, "net_ns_fd": peer_netns_fd, "mtu": mtu}
        if mac:
            peer_attrs["address"] = mac
        try:
            self.ipr.link("add", ifname=name, kind="veth", mtu=mtu, peer=peer_attrs)
        except NetlinkError as exc:
            raise _kernel_error(f"create veth pair {name}/{peer}", exc) from None

    def set_hairpin(self, index: int, on: bool) -> None:
        try:
            self.ipr.brport("set", index=index, mode=1 if on else 0)
        except NetlinkError as exc:
            raise _kernel_error("set hairpin mode", exc) from None

    def delete_link(self, index: int) -> None:
        try:
            self.ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise _kernel_error(f"delete link {index}", exc) from None

    # addresses and routes ---------------------------------------------------
    def addresses(self, index: int, family: int | None = None) -> list[tuple[str, int]]:
        kwargs: dict[str, Any] = {"index": index}
        if family:
            kwargs["family"] = family
        return [(m.get("IFA_ADDRESS"), m["prefixlen"]) for m in self.ipr.get_addr(**kwargs)]

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        try:
            self.ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _kernel_error(f"add address {address}/{prefixlen}", exc) from None

    def del_address(self, index: int, address: str, prefixlen: int) -> None:
        try:
            self.ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            raise _kernel_error(f"delete address {address}/{prefixlen}", exc) from None

    def add_route(self, dst: str, gateway: str | None, index: int, **extra: Any) -> None:
        attrs: dict[str, Any] = {"dst": dst, "oif": index, **extra}
        if gateway:
            attrs["gateway"] = gateway
        try:
            self.ipr.route("add", **attrs)
        except NetlinkError as exc:
            via = f" via {gateway}" if gateway else ""
            raise _kernel_error(f"add route {dst}{via}", exc) from None

    def routes(self, family: int) -> list[tuple[str, str | None, int]]:
        """(dst CIDR, gateway, oif) of the main table."""
        result = []
        for msg in self.ipr.get_routes(family=family, table=254):
            dst = msg.get("RTA_DST")
            dst = f"{dst}/{msg['dst_len']}" if dst else ("0.0.0.0/0" if family == 2 else "::/0")
            result.append((dst, msg.get("RTA_GATEWAY"), msg.get("RTA_OIF") or 0))
        return result
