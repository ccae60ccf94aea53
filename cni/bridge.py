"""The bridge plugin's ADD on validated input (DEL, CHECK, GC, STATUS: :mod:`cni.bridge_ops`).

ADD is a list of small steps; each step that changes something pushes its
undo onto a stack, and any failure unwinds the stack in reverse, so a failed
ADD leaves neither a veth nor a reservation nor NAT rules behind (the
reference leaks its veth here).  The bridge itself, its gateway address and
the forwarding sysctl are shared by all pods and are never undone, like the
reference.

Duplicate ADD (same container ID and ifname, same netns): rejected with
``container veth name provided (<ifname>) already exists`` *before* IPAM, so
no second address is reserved; in another netns the IPAM duplicate check
rejects it.  Both leave the first attachment untouched.

DEL is best effort and idempotent: a missing netns or link is skipped, the
reservation and NAT rules are released by container ID in any case.  NAT rules
go before the reservation, so a DEL that dies half-way always leaves the
reservation behind, which the next DEL or a GC finds (a GC cannot find NAT
rules whose reservation is already gone).

Test hook (fault drills, tests/cni/test_fault_drill.py): with
``FLANNELISH_TEST_KILL_AT=<point>`` in the environment of the process doing
the work -- the plugin on the in-process path, the daemon on the fast path,
never taken from the request -- that process SIGKILLs itself right after the
named step (``add:ipam``, ``add:veth``, ``add:addr``, ``add:masq``,
``del:masq``, ``del:ipam``).  Read once at import; each point costs one string
comparison.  Never set it outside tests.

"host" is the namespace the runtime called us in: the calling thread's own
in-process, the caller's (from SO_PEERCRED) in the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import signal
from collections.abc import Callable, Iterable

from flannelish.errors import CniCode, KernelError
from flannelish.kernel.mac import random_mac
from flannelish.kernel.netlink import MAIN_TABLE, RTPROT_BOOT, Addr, IPAddress, Link, Route
from flannelish.kernel.netns import current_netns_fd, in_netns, open_netns, same_netns
from flannelish.kernel.rawnetlink import RawNetlink

from . import ipam, masq, result
from .delegate import run_delegate
from .netconf import NetConf
from .protocol import CniError, Invocation

_KILL_AT = os.environ.get("FLANNELISH_TEST_KILL_AT", "")  # test hook, see the docstring


def _kill_point(point: str) -> None:
    if point == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


class Call:
    """One validated invocation and where its host side lives."""

    def __init__(
        self,
        inv: Invocation,
        doc: dict,
        conf: NetConf,
        host_fd: int | None = None,
        stderr: list[str] | None = None,
    ) -> None:
        self.inv, self.doc, self.conf = inv, doc, conf
        self.host_fd = host_fd  # None: the calling thread's namespace
        self.stderr: list[str] = stderr if stderr is not None else []

    def in_host(self) -> contextlib.AbstractContextManager[None]:
        return in_netns(self.host_fd)


def _open_pod(call: Call) -> int:
    """The pod netns fd; code 8 if it is the runtime's own namespace."""
    try:
        pod_fd = open_netns(call.inv.netns)
    except KernelError as exc:
        raise CniError(
            CniCode.INTERNAL, f'failed to open netns "{call.inv.netns}": {exc.details}'
        ) from None
    own = call.host_fd if call.host_fd is not None else current_netns_fd()
    try:
        if same_netns(pod_fd, own):
            os.close(pod_fd)
            raise CniError(
                CniCode.INVALID_NETNS,
                f'CNI_NETNS "{call.inv.netns}" is the runtime\'s own network namespace',
            )
    finally:
        if call.host_fd is None:
            os.close(own)
    return pod_fd


# --- IPAM --------------------------------------------------------------------


def _ipam_add(call: Call) -> tuple[dict, Callable[[], None]]:
    """Reserve addresses; returns (IPAM result in internal shape, undo)."""
    conf = call.conf
    if conf.ipam.delegated:
        with call.in_host():
            doc = run_delegate(conf.ipam.type, "ADD", call.inv, call.doc, call.stderr)
        res = result.normalize(doc or {})

        def undo_delegate() -> None:
            with call.in_host():
                run_delegate(conf.ipam.type, "DEL", call.inv, call.doc, call.stderr)

        return res, undo_delegate
    allocs = ipam.allocate(conf, call.inv.container_id, call.inv.ifname)
    res = result.new_result()
    for alloc in allocs:
        entry = {"address": f"{alloc.ip}/{alloc.range.subnet.prefixlen}"}
        if alloc.range.gateway is not None:
            entry["gateway"] = str(alloc.range.gateway)
        res["ips"].append(entry)
    res["routes"] = [dict(r) for r in conf.ipam.routes]
    if conf.ipam.resolv_conf:
        res["dns"] = _parse_resolv_conf(conf.ipam.resolv_conf)

    def undo_allocation() -> None:
        store = ipam.Store(conf.store_dir)
        with store.locked():
            for alloc in allocs:
                store.release(alloc.ip)

    return res, undo_allocation


RESOLV_CONF_MAX_BYTES = 64 * 1024  # glibc reads far less; /dev/zero must not fill memory


def _parse_resolv_conf(path: str) -> dict:
    dns: dict[str, list[str] | str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(RESOLV_CONF_MAX_BYTES + 1)
    except OSError as exc:
        raise CniError(
            CniCode.INVALID_CONFIG, f'invalid "ipam.resolvConf": {path}: {exc.strerror}'
        ) from None
    if len(text) > RESOLV_CONF_MAX_BYTES:
        raise CniError(
            CniCode.INVALID_CONFIG,
            f'invalid "ipam.resolvConf": {path} is larger than {RESOLV_CONF_MAX_BYTES} bytes',
        )
    lines = text.splitlines()
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2:
            continue
        key, values = parts[0], parts[1:]
        if key == "nameserver":
            dns.setdefault("nameservers", []).append(values[0])  # type: ignore[union-attr]
        elif key == "domain":
            dns["domain"] = values[0]
        elif key == "search":
            dns["search"] = values
        elif key == "options":
            dns.setdefault("options", []).extend(values)  # type: ignore[union-attr]
    return dns


# --- ADD ---------------------------------------------------------------------


def _ensure_bridge(host: RawNetlink, conf: NetConf) -> Link:
    link = host.link(conf.bridge)
    if link is None:
        try:
            host.create_bridge(conf.bridge, conf.mtu, random_mac())
        except KernelError as exc:
            if exc.errno != errno.EEXIST:  # EEXIST: a concurrent ADD created it first
                raise
        host.sysctl(f"net.ipv6.conf.{conf.bridge}.accept_ra", "0")
        # No duplicate address detection on the bridge: its IPv6 gateway (added
        # with IFA_F_NODAD too) must answer pods at once, not after DAD's 1-2 s.
        host.sysctl(f"net.ipv6.conf.{conf.bridge}.accept_dad", "0")
        link = host.link(conf.bridge)
        if link is None:
            raise CniError(CniCode.INTERNAL, f'bridge "{conf.bridge}" vanished after creation')
    elif link.kind != "bridge":
        raise CniError(
            CniCode.INTERNAL, f'"{conf.bridge}" already exists but is not a bridge ({link.kind})'
        )
    if conf.promisc and not link.promisc:
        host.set_link(link.index, promisc=True)
    if not link.up:
        host.set_link(link.index, up=True)
    return link


def _ensure_gateway(host: RawNetlink, conf: NetConf, bridge: Link, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    family = 2 if iface.version == 4 else 10
    want = Addr(bridge.index, iface.ip, iface.network.prefixlen)
    present = host.addrs(bridge.index, family)
    if want in present:
        return
    # Like the reference: any other IPv4 address conflicts; IPv6 ones only if they overlap.
    conflicting = [
        a
        for a in present
        if iface.version == 4
        or ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False).overlaps(iface.network)
    ]
    if conflicting and not conf.force_address:
        raise CniError(
            CniCode.INTERNAL,
            f'"{conf.bridge}" already has an IP address different from {cidr}',
            ", ".join(f"{a.address}/{a.prefixlen}" for a in conflicting),
        )
    for addr in conflicting:
        host.del_addr(addr)
    host.add_addr(want)
    host.sysctl(
        "net.ipv4.ip_forward" if iface.version == 4 else "net.ipv6.conf.all.forwarding", "1"
    )


def _gateways(res: dict) -> None:
    """Fill ips[].gateway with the subnet's first address where IPAM gave none."""
    for ip in res["ips"]:
        if not ip.get("gateway"):
            net = ipaddress.ip_interface(ip["address"]).network
            ip["gateway"] = str(net.network_address + 1)


def _default_route(res: dict) -> None:
    """isDefaultGateway: a default route via the gateway unless IPAM gave one with gw."""
    for ip in res["ips"]:
        iface = ipaddress.ip_interface(ip["address"])
        dst = "0.0.0.0/0" if iface.version == 4 else "::/0"
        if not any(r["dst"] == dst and r.get("gw") for r in res["routes"]):
            res["routes"] = [r for r in res["routes"] if r["dst"] != dst]
            res["routes"].append({"dst": dst, "gw": ip["gateway"]})


def cmd_add(call: Call) -> str:
    conf, inv = call.conf, call.inv
    pod_fd = _open_pod(call)
    undo: list[Callable[[], None]] = []
    host = pod = None
    try:
        host = RawNetlink(call.host_fd)
        pod = RawNetlink(pod_fd)
        if pod.link(inv.ifname) is not None:
            raise CniError(
                CniCode.INTERNAL, f"container veth name provided ({inv.ifname}) already exists"
            )
        bridge = _ensure_bridge(host, conf)
        res, release = _ipam_add(call)
        undo.append(release)
        _kill_point("add:ipam")
        if not res["ips"]:
            raise CniError(CniCode.INTERNAL, "IPAM plugin returned missing IP config")
        _gateways(res)
        if conf.is_default_gateway:
            _default_route(res)

        host_name = "veth" + os.urandom(4).hex()
        undo.append(lambda: _delete_named(host, host_name))  # before: the read-back may fail
        veth = host.create_veth(host_name, inv.ifname, pod_fd, conf.mtu, conf.mac)
        _kill_point("add:veth")
        cont = pod.link(inv.ifname)
        if cont is None:
            raise CniError(CniCode.INTERNAL, f"veth pair {host_name}/{inv.ifname} not found")
        host.sysctl(f"net.ipv6.conf.{host_name}.accept_ra", "0")
        host.set_link(veth.index, master=bridge.index, up=True)
        if conf.hairpin:
            host.set_hairpin(veth.index, True)

        pod.sysctl(f"net.ipv4.conf.{inv.ifname}.arp_notify", "1")
        pod.sysctl(f"net.ipv6.conf.{inv.ifname}.accept_dad", "0")
        for ip in res["ips"]:
            iface = ipaddress.ip_interface(ip["address"])
            pod.add_addr(Addr(cont.index, iface.ip, iface.network.prefixlen))
        pod.set_link(cont.index, up=True)
        for route in res["routes"]:
            _add_pod_route(pod, cont.index, route, res["ips"])
        _kill_point("add:addr")

        if conf.is_gateway:
            for ip in res["ips"]:
                prefix = ipaddress.ip_interface(ip["address"]).network.prefixlen
                _ensure_gateway(host, conf, bridge, f"{ip['gateway']}/{prefix}")
        if conf.ip_masq:
            pod_ips = [str(ipaddress.ip_interface(ip["address"]).ip) for ip in res["ips"]]
            subnets = [str(ipaddress.ip_interface(ip["address"]).network) for ip in res["ips"]]
            if conf.subnet_env is not None:
                # Node mode: pod-to-pod traffic across nodes keeps pod IPs. The
                # reference bridge exempts only this node's subnet, which NATs
                # cross-node pod traffic whenever the daemon runs without --ip-masq.
                subnets += [str(n) for n in conf.subnet_env.networks]
            with call.in_host():
                masq.setup(conf.name, inv.container_id, pod_ips, subnets)
            undo.append(lambda: _masq_teardown(call))
            _kill_point("add:masq")

        bridge = host.link(conf.bridge) or bridge  # its MAC is final once ports exist
        ours = {
            "interfaces": [
                {"name": bridge.name, "mac": bridge.mac, "mtu": bridge.mtu},
                {"name": host_name, "mac": veth.mac, "mtu": conf.mtu},
                {"name": inv.ifname, "mac": cont.mac, "mtu": conf.mtu, "sandbox": inv.netns},
            ],
            "ips": [dict(ip, interface=2) for ip in res["ips"]],
            "routes": res["routes"],
            "dns": conf.dns or res.get("dns") or {},
        }
        out = _chain(conf.prev_result, ours)
        undo.clear()
        return result.render(out, conf.version)
    except BaseException:
        for step in reversed(undo):
            with contextlib.suppress(Exception):
                step()
        raise
    finally:
        for sock in (pod, host):
            if sock is not None:
                sock.close()
        os.close(pod_fd)


def _delete_named(host: RawNetlink | None, name: str) -> None:
    link = host.link(name) if host else None
    if host and link:
        host.delete_link(link.index)


def _add_pod_route(pod: RawNetlink, index: int, route: dict, ips: list[dict]) -> None:
    dst = ipaddress.ip_network(route["dst"], strict=False)
    gw = route.get("gw")
    if not gw:
        gw = next(
            (
                ip["gateway"]
                for ip in ips
                if ipaddress.ip_interface(ip["address"]).version == dst.version
            ),
            None,
        )
    pod.add_route(
        Route(
            dst,
            ipaddress.ip_address(gw) if gw else None,
            index,
            proto=RTPROT_BOOT,
            table=MAIN_TABLE if route.get("table") is None else route["table"],
            scope=route.get("scope"),
            priority=route.get("priority"),
        )
    )


def _chain(prev: dict | None, ours: dict) -> dict:
    """Our result appended to a prevResult (which is passed through, never dropped)."""
    if not prev:
        return ours
    out = result.normalize(prev)
    offset = len(out["interfaces"])
    out["interfaces"] += ours["interfaces"]
    out["ips"] += [dict(ip, interface=ip["interface"] + offset) for ip in ours["ips"]]
    out["routes"] += [r for r in ours["routes"] if r not in out["routes"]]
    if not out["dns"]:
        out["dns"] = ours["dns"]
    return out


# --- DEL ---------------------------------------------------------------------


def _masq_families(conf: NetConf, held: Iterable[IPAddress] = ()) -> tuple[str, ...]:
    """The nft families (masq.FAMILIES) a pod of this network can have chains in.

    ``held``: the pod's addresses in the IPAM store.  A pod added while the
    network was dual-stack keeps its IPv6 chain after the network became
    IPv4-only; its stored IPv6 address sends DEL and GC to that table too.
    """
    if not conf.ipam.range_sets:
        return masq.FAMILIES  # unknown (delegated IPAM, or no subnet.env): look in both
    versions = {r.subnet.version for rset in conf.ipam.range_sets for r in rset}
    versions |= {ip.version for ip in held}
    return tuple(f for f, v in (("ip", 4), ("ip6", 6)) if v in versions)


def _masq_teardown(
    call: Call, container_id: str | None = None, held: Iterable[IPAddress] = ()
) -> None:
    with call.in_host():
        masq.teardown(
            call.conf.name,
            container_id or call.inv.container_id,
            families=_masq_families(call.conf, held),
        )


def _masq_maybe(conf: NetConf) -> bool:
    # Without subnet.env (daemon gone) we cannot know the default: clean up anyway.
    return conf.ip_masq or (conf.node_mode and conf.subnet_env is None)
