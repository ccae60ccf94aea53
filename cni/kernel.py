"""The thin kernel layer: namespaces, links, addresses, routes, sysctls.

Every netlink call of the plugin goes through :class:`Netlink` (one socket
bound to one network namespace) so that the ADD/DEL logic reads as steps and
errors come back as KernelError naming the operation.

Namespaces are entered per *thread* with setns(2) (Python 3.11 has no
os.setns, hence ctypes): a netlink socket stays bound to the namespace it was
created in, /proc/sys/net and child processes follow the calling thread's
namespace.  This is what lets the daemon's worker threads serve callers from
any namespace concurrently, and the in-process path use the very same code.
The netlink messages themselves are built in flannelish.kernel.rtnl (standard
library only, shared with the daemon).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator

from flannelish.errors import CniCode, KernelError
from flannelish.kernel import rtnl
from flannelish.kernel.rtnl import LinkMsg, RtnlSocket, current_netns_fd, mac_str, setns

from .protocol import CniError


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


class LinkInfo:
    """What the plugin needs to know about one link (a snapshot)."""

    __slots__ = ("index", "kind", "mac", "master", "mtu", "name", "peer_index", "promisc", "up")

    def __init__(
        self,
        index: int,
        name: str,
        kind: str,
        mac: str,
        mtu: int,
        master: int,
        promisc: bool,
        up: bool,
        peer_index: int,
    ) -> None:
        self.index, self.name, self.kind, self.mac, self.mtu = index, name, kind, mac, mtu
        self.master, self.promisc, self.up = master, promisc, up
        self.peer_index = peer_index  # IFLA_LINK: for a veth, the peer's index in the other netns


def _kernel_error(what: str, exc: OSError) -> KernelError:
    return KernelError(f"{what}: {exc.strerror or exc}")


_GONE = (errno.ENODEV, errno.ENOENT)


class Netlink:
    """A netlink socket bound to one namespace (fd None: the thread's current one)."""

    def __init__(self, netns_fd: int | None = None) -> None:
        with entered(netns_fd):
            self.nl = RtnlSocket()
        self.netns_fd = netns_fd

    def close(self) -> None:
        self.nl.close()

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

    # links -----------------------------------------------------------------
    def link(self, name: str) -> LinkInfo | None:
        try:
            return self._info(self.nl.link(name=name))
        except OSError as exc:
            if exc.errno in _GONE:
                return None
            raise _kernel_error(f"look up link {name}", exc) from None

    def link_by_index(self, index: int) -> LinkInfo | None:
        try:
            return self._info(self.nl.link(index=index))
        except OSError:
            return None

    @staticmethod
    def _info(raw: LinkMsg) -> LinkInfo:
        return LinkInfo(
            index=raw.index,
            name=raw.name,
            kind=raw.kind,
            mac=mac_str(raw.attrs.get(rtnl.IFLA_ADDRESS, b"")),
            mtu=raw.u32(rtnl.IFLA_MTU),
            master=raw.u32(rtnl.IFLA_MASTER),
            promisc=bool(raw.flags & rtnl.IFF_PROMISC),
            up=bool(raw.flags & rtnl.IFF_UP),
            peer_index=raw.u32(rtnl.IFLA_LINK),
        )

    def create_bridge(self, name: str, mtu: int, mac: str) -> None:
        data = rtnl.nested(
            rtnl.IFLA_INFO_DATA,
            rtnl.u32(rtnl.IFLA_BR_STP_STATE, 0),
            rtnl.u32(rtnl.IFLA_BR_FORWARD_DELAY, 1500),  # centiseconds, as the reference
            rtnl.u32(rtnl.IFLA_BR_AGEING_TIME, 30000),
        )
        info = rtnl.nested(rtnl.IFLA_LINKINFO, rtnl.string(rtnl.IFLA_INFO_KIND, "bridge"), data)
        attrs = (
            rtnl.string(rtnl.IFLA_IFNAME, name)
            + rtnl.u32(rtnl.IFLA_MTU, mtu)
            + rtnl.attr(rtnl.IFLA_ADDRESS, rtnl.mac_bytes(mac))
            + info
        )
        try:
            self.nl.new_link(attrs)
        except OSError as exc:
            if exc.errno != errno.EEXIST:  # a concurrent ADD created it first
                raise _kernel_error(f"create bridge {name}", exc) from None

    def set_link(
        self,
        index: int,
        what: str,
        up: bool | None = None,
        master: int | None = None,
        promisc: bool | None = None,
    ) -> None:
        try:
            self.nl.set_link(index, up=up, master=master, promisc=promisc)
        except OSError as exc:
            raise _kernel_error(what, exc) from None

    def create_veth(
        self, name: str, peer: str, peer_netns_fd: int, mtu: int, mac: str | None
    ) -> None:
        peer_attrs = (
            rtnl.string(rtnl.IFLA_IFNAME, peer)
            + rtnl.u32(rtnl.IFLA_NET_NS_FD, peer_netns_fd)
            + rtnl.u32(rtnl.IFLA_MTU, mtu)
        )
        if mac:
            peer_attrs += rtnl.attr(rtnl.IFLA_ADDRESS, rtnl.mac_bytes(mac))
        info = rtnl.nested(
            rtnl.IFLA_LINKINFO,
            rtnl.string(rtnl.IFLA_INFO_KIND, "veth"),
            rtnl.nested(
                rtnl.IFLA_INFO_DATA, rtnl.nested(rtnl.VETH_INFO_PEER, rtnl.ifinfo(), peer_attrs)
            ),
        )
        attrs = rtnl.string(rtnl.IFLA_IFNAME, name) + rtnl.u32(rtnl.IFLA_MTU, mtu) + info
        try:
            self.nl.new_link(attrs)
        except OSError as exc:
            raise _kernel_error(f"create veth pair {name}/{peer}", exc) from None

    def set_hairpin(self, index: int, on: bool) -> None:
        try:
            self.nl.set_brport_mode(index, on)
        except OSError as exc:
            raise _kernel_error("set hairpin mode", exc) from None

    def delete_link(self, index: int) -> None:
        try:
            self.nl.del_link(index)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise _kernel_error(f"delete link {index}", exc) from None

    # addresses and routes ---------------------------------------------------
    def addresses(self, index: int, family: int = 0) -> list[tuple[str, int]]:
        """(address, prefixlen) of link `index` in `family` (0: all)."""
        return [
            (socket.inet_ntop(_af(m.family), m.address), m.prefixlen)
            for m in self.nl.addrs(family)
            if m.index == index and m.address
        ]

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        try:
            self.nl.addr("add", index, _packed(address), prefixlen)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise _kernel_error(f"add address {address}/{prefixlen}", exc) from None

    def del_address(self, index: int, address: str, prefixlen: int) -> None:
        try:
            self.nl.addr("del", index, _packed(address), prefixlen)
        except OSError as exc:
            raise _kernel_error(f"delete address {address}/{prefixlen}", exc) from None

    def add_route(
        self,
        dst: str,
        gateway: str | None,
        index: int,
        priority: int | None = None,
        table: int | None = None,
        scope: int | None = None,
    ) -> None:
        net, _, prefix = dst.partition("/")
        try:
            self.nl.route(
                "add",
                _packed(net),
                int(prefix),
                _packed(gateway) if gateway else None,
                index,
                table=rtnl.RT_TABLE_MAIN if table is None else table,
                scope=scope,
                priority=priority,
            )
        except OSError as exc:
            via = f" via {gateway}" if gateway else ""
            raise _kernel_error(f"add route {dst}{via}", exc) from None

    def routes(self, family: int) -> list[tuple[str, str | None, int]]:
        """(dst CIDR, gateway, oif) of the unicast routes in the main table."""
        result = []
        for m in self.nl.routes(family):
            if m.table != rtnl.RT_TABLE_MAIN or m.type != rtnl.RTN_UNICAST:
                continue
            af = _af(m.family)
            raw_dst, raw_gw = m.attrs.get(rtnl.RTA_DST), m.attrs.get(rtnl.RTA_GATEWAY)
            if raw_dst is not None:
                dst = socket.inet_ntop(af, raw_dst)
            else:
                dst = "0.0.0.0" if af == socket.AF_INET else "::"
            gw = socket.inet_ntop(af, raw_gw) if raw_gw is not None else None
            result.append((f"{dst}/{m.dst_len}", gw, m.u32(rtnl.RTA_OIF)))
        return result


def _af(family: int) -> int:
    return socket.AF_INET if family == socket.AF_INET else socket.AF_INET6


def _packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
