"""`flannelish uninstall`: remove everything the daemon leaves in place on purpose.

The daemon never removes its data path when it stops (SIGTERM, a crash, an
upgrade): the overlay device, the routes with our route protocol and the
nftables tables (masquerade and the anti-spoof filter) stay, so pods keep
talking and stay protected while it is down.  Taking a node out of the
overlay is therefore an explicit step; this module is that step.  It removes
only what carries our marks: overlay devices named like ours (``flannel.<VNI>``
of kind vxlan, ``flannel-wg`` and ``flannel-wg-v6`` of kind wireguard or tun), routes with
:data:`ROUTE_PROTO`, and our own nft table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from flannelish.cni.handler import POLICY_MARKER
from flannelish.errors import KernelError
from flannelish.kernel.netlink import ROUTE_PROTO, Netlink
from flannelish.kernel.nft import NftRunner
from flannelish.node.firewall import FAMILIES, TABLE

OVERLAY_DEVICE = re.compile(r"flannel\.\d{1,8}\Z")
WIREGUARD_DEVICES = ("flannel-wg", "flannel-wg-v6")


@dataclass
class Teardown:
    """What was (or, with dry_run, would be) removed."""

    routes: list[str] = field(default_factory=list)
    nexthops: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.routes or self.nexthops or self.devices or self.tables or self.files)


def teardown(
    nl: Netlink, nft: NftRunner, dry_run: bool = False, state_dir: Path | None = None
) -> Teardown:
    """Remove our routes, nexthop objects, overlay devices and nft table; nothing else."""
    done = Teardown()
    for route in nl.routes(ROUTE_PROTO):
        if not dry_run:
            nl.del_route(route)
        done.routes.append(str(route.dst))
    # After the routes through them; those on a device we delete would go with it.
    try:
        nexthops = nl.nexthops(ROUTE_PROTO)
    except KernelError:  # a kernel without nexthop objects
        nexthops = []
    for nexthop in nexthops:
        if not dry_run:
            nl.del_nexthop(nexthop)
        done.nexthops.append(f"id {nexthop.id} via {nexthop.gateway}")
    for link in nl.links():
        ours = link.kind == "vxlan" and OVERLAY_DEVICE.match(link.name) is not None
        # flannel-wg(-v6): kernel WireGuard, or wireguard-go's TUN (it exits when the TUN goes).
        ours = ours or (link.name in WIREGUARD_DEVICES and link.kind in ("wireguard", "tun"))
        if ours:
            if not dry_run:
                nl.delete_link(link.index)
            done.devices.append(link.name)
    # ours (table ip flannelish and, with IPv6, table ip6 flannelish) and network
    # policy's (flannelish.policy: pods stay protected until this step)
    tables = [(family, TABLE) for family in FAMILIES] + [("inet", "flannelish-policy")]
    for family, table in tables:
        if nft.listing("table", family, table) is not None:
            if not dry_run:
                nft.run(f"delete table {family} {table}\n")
            done.tables.append(f"{family} {table}")
    marker = state_dir / POLICY_MARKER if state_dir is not None else None
    if marker is not None and marker.exists():  # in-process CNI ADDs are refused while it exists
        if not dry_run:
            marker.unlink()
        done.files.append(str(marker))
    return done
