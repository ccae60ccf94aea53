"""Built-in host-local IPAM: allocator + on-disk store compatible with host-local.

Store layout under ``<dataDir>/<network name>/`` (docs/cni-compat.md §8), so the
reference host-local plugin and flannelish-cni can take over from each other:

* ``<ip>``: one file per reservation holding ``<containerID>\\r\\n<ifname>``
* ``last_reserved_ip.<N>``: the last address handed out from range set N
* ``lock``: flock'ed for every read-modify-write of the store

Each operation opens the lock file afresh: flock belongs to the open file, so
threads of the daemon serialise exactly like separate plugin processes do.
Nothing is cached between calls; the files are the only truth.

Allocation is round-robin: the scan starts after ``last_reserved_ip.N`` and
wraps around, so a just-released address is not handed out again while
others are free.  The gateway, network and (IPv4) broadcast address are
never handed out.  Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from typing import NamedTuple

from flannelish.errors import CniCode

from .netconf import IPAddress, NetConf, Range
from .protocol import CniError

LAST_RESERVED = "last_reserved_ip."


class Entry(NamedTuple):
    ip: IPAddress
    container_id: str
    ifname: str

    def owned_by(self, container_id: str, ifname: str) -> bool:
        # Legacy host-local files hold only the container ID.
        return self.container_id == container_id and self.ifname in (ifname, "")


class Allocation(NamedTuple):
    range: Range
    ip: IPAddress
    set_index: int


class Store:
    """The host-local directory of one network; use ``with store.locked():``."""

    def __init__(self, directory: str) -> None:
        self.dir = directory

    @contextlib.contextmanager
    def locked(self, create: bool = True) -> Iterator[Store]:
        if not create and not os.path.isdir(self.dir):
            yield self  # nothing stored yet: nothing to lock
            return
        try:
            if not os.path.isdir(self.dir):
                os.makedirs(self.dir, mode=0o755, exist_ok=True)
                _sync_path(os.path.dirname(os.path.abspath(self.dir)))  # the new store's name
            path = os.path.join(self.dir, "lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o750)
        except OSError as exc:  # dataDir is a file, read-only, not ours...
            raise CniError(
                CniCode.IO_FAILURE, f"cannot use IPAM store {self.dir}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def entries(self) -> list[Entry]:
        result = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        for name in names:
            if name == "lock" or name.startswith(LAST_RESERVED):
                continue
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue
            try:
                path = os.path.join(self.dir, name)
                with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
                    content = fh.read(4096)  # "<id>\r\n<ifname>": far shorter
            except OSError:
                continue  # gone meanwhile, or not a file: O_EXCL still keeps the address taken
            cid, _, ifname = content.partition("\r\n")
            result.append(Entry(ip, cid.strip(), ifname.strip()))
        return result

    def reserve(
        self, ip: IPAddress, container_id: str, ifname: str, set_index: int, sync: bool = True
    ) -> bool:
        """Create the file for `ip` durably; False when another container holds it.

        The file's content and then the directory entry are fsync'ed before
        the address is handed out (the reference host-local does neither): after
        a power loss a pod's address is still reserved, never handed out twice.
        sync=False leaves that to the caller (``sync_reserved``), which does it
        after dropping the lock: the name is taken by O_EXCL at once, and
        concurrent ADDs then wait for their fsyncs side by side instead of in
        turn behind the flock (a convoy of 2 fsyncs per queued ADD).
        """
        path = os.path.join(self.dir, str(ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            try:
                data = f"{container_id}\r\n{ifname}".encode()
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                os.fchmod(fd, 0o644)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            # Never leave an empty or torn reservation that nobody owns.
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise _write_error(path, exc) from None
        self._write(f"{LAST_RESERVED}{set_index}", str(ip))
        if sync:
            self.sync_dir()  # makes both new names durable
        return True

    def sync_reserved(self, ips: list[IPAddress]) -> None:
        """fsync the reservations made with sync=False, then the directory (no lock needed)."""
        for ip in ips:
            path = os.path.join(self.dir, str(ip))
            try:
                _sync_path(path, directory=False)
            except OSError as exc:
                raise _write_error(path, exc) from None
        self.sync_dir()

    def release(self, ip: IPAddress, sync: bool = True) -> None:
        """Remove the reservation of `ip` (sync=False: the caller calls sync_dir once)."""
        try:
            os.unlink(os.path.join(self.dir, str(ip)))
        except FileNotFoundError:
            return
        if sync:
            self.sync_dir()

    def sync_dir(self) -> None:
        """fsync the store directory, so created and removed names survive a crash."""
        try:
            _sync_path(self.dir)
        except OSError as exc:
            raise CniError(
                CniCode.IO_FAILURE, f"failed to sync IPAM store {self.dir}: {exc.strerror or exc}"
            ) from None

    def last_reserved(self, set_index: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED}{set_index}")) as fh:
                return ipaddress.ip_address(fh.read().strip())
        except (OSError, ValueError):
            return None

    def _write(self, name: str, content: str) -> None:
        # Written in place like host-local and not fsync'ed: a torn or lost write
        # only costs round-robin order (last_reserved() ignores what it cannot parse).
        fd = os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)


def _write_error(path: str, exc: OSError) -> CniError:
    return CniError(
        CniCode.IO_FAILURE, f"failed to write IP reservation {path}: {exc.strerror or exc}"
    )


def _sync_path(path: str, directory: bool = True) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _candidates(rset: list[Range], last: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
    """Every address of the set once, starting after `last`, wrapping around."""
    spans = [(r, int(r.start), int(r.end)) for r in rset]
    first_span, first_value = 0, spans[0][1]
    if last is not None:
        for k, (r, _lo, _hi) in enumerate(spans):
            if r.contains(last):
                first_span, first_value = k, int(last) + 1
                break
    make = type(rset[0].start)
    n = len(spans)
    for step in range(n + 1):
        r, lo, hi = spans[(first_span + step) % n]
        if step == 0:
            lo = first_value
        elif step == n:
            hi = first_value - 1
        for value in range(lo, hi + 1):
            yield r, make(value)


def _set_bounds(rset: list[Range]) -> str:
    return ",".join(str(r) for r in rset)


def allocate(conf: NetConf, container_id: str, ifname: str) -> list[Allocation]:
    """Reserve one address per range set (requested ones first); all or nothing."""
    if not conf.ipam.range_sets:
        raise CniError(CniCode.INVALID_CONFIG, "no IP ranges specified")
    store = Store(conf.store_dir)
    done: list[Allocation] = []
    with store.locked():
        entries = store.entries()
        taken = {e.ip for e in entries}
        requested = list(conf.requested_ips)
        try:
            for index, rset in enumerate(conf.ipam.range_sets):
                done.append(
                    _allocate_one(
                        store, index, rset, entries, taken, requested, container_id, ifname
                    )
                )
            if requested:
                raise CniError(
                    CniCode.INTERNAL,
                    "failed to allocate all requested IPs: "
                    + ", ".join(str(ip) for ip in requested),
                )
        except BaseException:
            _unreserve(store, done)
            raise
    # Durable before handed out, but outside the lock (see Store.reserve): the
    # O_EXCL names keep the addresses ours meanwhile.
    try:
        store.sync_reserved([alloc.ip for alloc in done])
    except BaseException:
        _unreserve(store, done)  # our own O_EXCL names: no lock needed to remove them
        raise
    return done


def _unreserve(store: Store, done: list[Allocation]) -> None:
    for alloc in done:
        store.release(alloc.ip, sync=False)
    if done:
        with contextlib.suppress(CniError):
            store.sync_dir()


def _allocate_one(
    store: Store,
    index: int,
    rset: list[Range],
    entries: list[Entry],
    taken: set[IPAddress],
    requested: list[IPAddress],
    container_id: str,
    ifname: str,
) -> Allocation:
    for entry in entries:
        if entry.owned_by(container_id, ifname) and any(r.contains(entry.ip) for r in rset):
            raise CniError(
                CniCode.INTERNAL,
                f"failed to allocate for range {index}: {entry.ip} has been allocated to "
                f"{container_id}, duplicate allocation is not allowed",
            )
    wanted = next((ip for ip in requested if any(r.contains(ip) for r in rset)), None)
    if wanted is not None:
        requested.remove(wanted)
        r = next(r for r in rset if r.contains(wanted))
        if not r.allocatable(wanted):
            raise CniError(CniCode.INTERNAL, f"failed to allocate all requested IPs: {wanted}")
        if wanted in taken or not store.reserve(wanted, container_id, ifname, index, sync=False):
            raise CniError(
                CniCode.INTERNAL,
                f"requested IP address {wanted} is not available in range set {_set_bounds(rset)}",
            )
        taken.add(wanted)
        return Allocation(r, wanted, index)
    for r, ip in _candidates(rset, store.last_reserved(index)):
        if ip in taken or not r.allocatable(ip):
            continue
        if store.reserve(ip, container_id, ifname, index, sync=False):
            taken.add(ip)
            return Allocation(r, ip, index)
    raise CniError(
        CniCode.INTERNAL,
        f"failed to allocate for range {index}: no IP addresses available in range set: "
        f"{_set_bounds(rset)}",
    )


def release(store_dir: str, container_id: str, ifname: str) -> list[IPAddress]:
    """Free every address of (container, ifname); nothing found is fine (DEL is idempotent).

    The directory is fsync'ed after the lock is dropped, so concurrent DELs do
    not queue one fsync each behind the flock.
    """
    store = Store(store_dir)
    freed = []
    with store.locked(create=False):
        for entry in store.entries():
            if entry.owned_by(container_id, ifname):
                store.release(entry.ip, sync=False)
                freed.append(entry.ip)
    if freed:
        store.sync_dir()
    return freed


def find(store_dir: str, container_id: str, ifname: str) -> list[IPAddress]:
    store = Store(store_dir)
    with store.locked(create=False):
        return [e.ip for e in store.entries() if e.owned_by(container_id, ifname)]


def collect_garbage(store_dir: str, valid: list[tuple[str, str]]) -> list[Entry]:
    """Release reservations of attachments not in `valid`; returns what was released."""
    keep = set(valid)
    keep_ids = {cid for cid, ifname in valid if not ifname}
    store = Store(store_dir)
    released = []
    with store.locked(create=False):
        for entry in store.entries():
            if (entry.container_id, entry.ifname) in keep or entry.container_id in keep_ids:
                continue
            if not entry.ifname and any(cid == entry.container_id for cid, _ in valid):
                continue  # legacy file without ifname: keep while the container is valid
            store.release(entry.ip, sync=False)
            released.append(entry)
        if released:
            store.sync_dir()
    return released


def free_count(conf: NetConf) -> list[int]:
    """Free addresses per range set (for STATUS), counted, not scanned."""
    store = Store(conf.store_dir)
    with store.locked(create=False):
        taken = {e.ip for e in store.entries()}
    counts = []
    for rset in conf.ipam.range_sets:
        free = 0
        for r in rset:
            size = int(r.end) - int(r.start) + 1
            excluded = {r.gateway, r.subnet.network_address}
            if r.subnet.version == 4:
                excluded.add(r.subnet.broadcast_address)
            size -= sum(1 for ip in excluded if ip is not None and r.contains(ip))
            size -= sum(1 for ip in taken if r.contains(ip) and ip not in excluded)
            free += max(size, 0)
        counts.append(free)
    return counts


def is_missing_dir(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT
