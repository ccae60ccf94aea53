"""The bridge plugin's DEL, CHECK, GC and STATUS (ADD is :mod:`cni.bridge`).

DEL tolerates what is already gone and removes the NAT rules before it
releases the address (a DEL killed in between leaves nothing GC cannot
find); CHECK compares the pod with prevResult; GC releases what no valid
attachment holds; STATUS reports whether ADD could work now.  Both address
families alike: the IPAM store holds one file per address, a pod's NAT chains
live in ``table ip`` and/or ``table ip6 flannelish_cni`` (:mod:`cni.masq`).
"""

from __future__ import annotations

import ipaddress
import os

from flannelish.errors import CniCode
from flannelish.kernel.netlink import Addr, IPAddress
from flannelish.kernel.rawnetlink import RawNetlink

from . import ipam, masq, result
from .bridge import (
    Call,
    _kill_point,
    _masq_maybe,
    _masq_teardown,
    _open_pod,
)
from .delegate import run_delegate
from .protocol import CniError, version_tuple


def cmd_del(call: Call) -> None:
    conf, inv = call.conf, call.inv
    if inv.netns:
        pod_fd = None
        try:
            pod_fd = _open_pod(call)
        except CniError as exc:
            if exc.cni_code == CniCode.INVALID_NETNS:
                raise  # never delete interfaces in the runtime's own namespace
        if pod_fd is not None:
            try:
                with RawNetlink(pod_fd) as pod:
                    link = pod.link(inv.ifname)
                    if link is not None:
                        pod.delete_link(link.index)  # the host end goes with it
            finally:
                os.close(pod_fd)
    if _masq_maybe(conf):  # before the reservation: see the module docstring
        held = (
            [] if conf.ipam.delegated else ipam.find(conf.store_dir, inv.container_id, inv.ifname)
        )
        _masq_teardown(call, held=held)
        _kill_point("del:masq")
    if conf.ipam.delegated:
        with call.in_host():
            run_delegate(conf.ipam.type, "DEL", inv, call.doc, call.stderr)
    else:
        ipam.release(conf.store_dir, inv.container_id, inv.ifname)
    _kill_point("del:ipam")


# --- CHECK -------------------------------------------------------------------


def cmd_check(call: Call) -> None:
    conf, inv = call.conf, call.inv
    if version_tuple(conf.version) < (0, 4, 0):
        raise CniError(CniCode.INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    if not conf.prev_result:
        raise CniError(CniCode.INTERNAL, "Required prevResult missing")
    prev = result.normalize(conf.prev_result)
    if conf.ipam.delegated:
        with call.in_host():
            run_delegate(conf.ipam.type, "CHECK", inv, call.doc, call.stderr)
    elif not ipam.find(conf.store_dir, inv.container_id, inv.ifname):
        raise CniError(
            CniCode.INTERNAL,
            f"host-local: Failed to find address added by container {inv.container_id}",
        )
    ifaces = prev["interfaces"]
    idx = next(
        (
            i
            for i, f in enumerate(ifaces)
            if f.get("name") == inv.ifname and f.get("sandbox") == inv.netns
        ),
        None,
    )
    if idx is None:
        raise CniError(CniCode.INTERNAL, f"prevResult lists no interface {inv.ifname} in the pod")
    want = ifaces[idx]
    pod_fd = _open_pod(call)
    try:
        with RawNetlink(pod_fd) as pod, RawNetlink(call.host_fd) as host:
            cont = pod.link(inv.ifname)
            if cont is None:
                raise CniError(CniCode.INTERNAL, f"interface {inv.ifname} not found in the pod")
            if want.get("mac") and want["mac"].lower() != cont.mac:
                raise CniError(
                    CniCode.INTERNAL,
                    f"interface {inv.ifname} MAC {cont.mac} does not match {want['mac']}",
                )
            present = set(pod.addrs(cont.index, family=0))
            for ip in prev["ips"]:
                if ip.get("interface") != idx:
                    continue
                iface = ipaddress.ip_interface(ip["address"])
                if Addr(cont.index, iface.ip, iface.network.prefixlen) not in present:
                    raise CniError(
                        CniCode.INTERNAL,
                        f"Failed to match addr {ip['address']} on interface {inv.ifname}",
                    )
            _check_routes(pod, cont.index, prev["routes"])
            bridge = host.link(conf.bridge)
            if bridge is None or bridge.kind != "bridge":
                raise CniError(CniCode.INTERNAL, f'bridge "{conf.bridge}" not found')
            peer = host.link_by_index(cont.peer_index)
            if peer is None or peer.master != bridge.index:
                raise CniError(
                    CniCode.INTERNAL, f"the host end of {inv.ifname} is not a port of {conf.bridge}"
                )
    finally:
        os.close(pod_fd)
    families = {
        "ip6" if ipaddress.ip_interface(ip["address"]).version == 6 else "ip"
        for ip in prev["ips"]
        if ip.get("interface") == idx
    }
    if conf.ip_masq:
        for family in sorted(families):
            with call.in_host():
                ok = masq.exists(conf.name, inv.container_id, family=family)
            if not ok:
                raise CniError(
                    CniCode.INTERNAL,
                    f"masquerade rules of {inv.container_id} missing",
                    f"table {family} {masq.TABLE}",
                )


def _check_routes(pod: RawNetlink, index: int, routes: list[dict]) -> None:
    table = {str(r.dst) for r in pod.routes(proto=None, family=0) if r.oif == index}
    for route in routes:
        dst = str(ipaddress.ip_network(route["dst"], strict=False))
        if dst not in table:
            raise CniError(CniCode.INTERNAL, f"Failed to match route {dst} in the pod")


# --- GC and STATUS -----------------------------------------------------------


def cmd_gc(call: Call) -> None:
    conf = call.conf
    if conf.ipam.delegated:
        with call.in_host():
            run_delegate(conf.ipam.type, "GC", call.inv, call.doc, call.stderr)
        return
    released = ipam.collect_garbage(conf.store_dir, conf.valid_attachments)
    if not _masq_maybe(conf):
        return
    errors = []
    held: dict[str, list[IPAddress]] = {}
    for entry in released:
        held.setdefault(entry.container_id, []).append(entry.ip)
    for container_id in sorted(held):
        try:
            _masq_teardown(call, container_id, held[container_id])
        except Exception as exc:  # GC continues past errors and reports them all
            errors.append(f"{container_id}: {exc}")
    if errors:
        raise CniError(CniCode.INTERNAL, "GC could not remove all NAT rules", "; ".join(errors))


def cmd_status(call: Call) -> None:
    conf = call.conf
    if conf.ipam.delegated:
        with call.in_host():
            run_delegate(conf.ipam.type, "STATUS", call.inv, call.doc, call.stderr)
        return
    for index, free in enumerate(ipam.free_count(conf)):
        if free == 0:
            bounds = ",".join(str(r) for r in conf.ipam.range_sets[index])
            raise CniError(
                CniCode.STATUS_NOT_AVAILABLE,
                f"no IP addresses available in range set {index}: {bounds}",
            )
