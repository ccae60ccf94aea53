"""What `flannelish doctor` gathers about flanneld on this node (read-only).

* processes in *this* network namespace (``/proc/<pid>/ns/net`` is the same
  inode as ours) whose ``/proc/<pid>/comm`` is ``flanneld``, and the
  ``flannelish daemon`` processes there: both at once fight over one device
  and one set of routes;
* routes through the overlay devices (``flannel.<VNI>``, and the IPv6 routes
  through ``flannel-v6.<VNI>``) without our route protocol (flanneld's, left
  behind for peers that are gone: the daemon takes over only routes it
  programs itself, docs/flannel-compat.md §7);
* a blackhole route to our subnet of another protocol at metric 0
  (flanneld's ``--ip-blackhole-route``): it shadows the CNI bridge's route
  when the bridge got its address later;
* flanneld's iptables chains (``FLANNEL-POSTRTG``, ``FLANNEL-FWD``), read
  from the nftables ruleset doctor lists anyway (iptables-nft shows them
  there), and whether our own ``table ip flannelish`` is there (a stopped
  daemon leaves it; beside flanneld its VXLAN peer set goes stale).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

ROUTE_PROTO = "70"  # flannelish's routes, as `ip -j route` prints the protocol
FLANNELD_CHAINS = ("FLANNEL-POSTRTG", "FLANNEL-FWD")


@dataclass
class FlanneldFacts:
    flanneld_pids: list[int] = field(default_factory=list)
    daemon_pids: list[int] = field(default_factory=list)  # flannelish daemon processes
    foreign_routes: list[tuple[str, str | None, str]] = field(default_factory=list)  # dst gw proto
    foreign_blackholes: list[tuple[str, str, int]] = field(default_factory=list)  # dst proto metric
    iptables_chains: list[str] = field(default_factory=list)
    our_table: bool = False  # table ip flannelish is in the ruleset
    # our nexthop objects (protocol 70) no route uses, and whether some are still used
    unused_nexthops: list[int] = field(default_factory=list)
    nexthops_in_use: bool = False


def _netns(pid: str, proc: Path) -> str | None:
    try:
        return os.readlink(proc / pid / "ns" / "net")
    except OSError:
        return None


def processes(proc: Path = Path("/proc")) -> tuple[list[int], list[int]]:
    """(flanneld PIDs, flannelish daemon PIDs) in our network namespace."""
    own = _netns("self", proc)
    me = os.getpid()
    flanneld, daemons = [], []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm not in ("flanneld", "flannelish") and not comm.startswith("python"):
            continue
        if own is None or _netns(entry.name, proc) != own:
            continue
        if comm == "flanneld":
            flanneld.append(int(entry.name))
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [Path(a.decode(errors="replace")).name for a in argv if a]
        if "flannelish" in words and "daemon" in words:
            daemons.append(int(entry.name))
    return sorted(flanneld), sorted(daemons)


def _ip_json(*argv: str) -> list[dict[str, Any]]:
    result = subprocess.run(["ip", "-j", *argv], capture_output=True, text=True, timeout=10)
    return json.loads(result.stdout or "[]") if result.returncode == 0 else []


def collect(
    device: str | None,
    subnet: IPv4Network | None,
    ruleset: list[dict[str, Any]] | None,
    device6: str | None = None,
) -> FlanneldFacts:
    """`device6`: the IPv6 overlay device (``flannel-v6.<VNI>``), if there is one."""
    facts = FlanneldFacts()
    facts.flanneld_pids, facts.daemon_pids = processes()
    try:
        for family, dev in (("-4", device), ("-6", device6)):
            if not dev:
                continue
            for r in _ip_json(family, "route", "show", "dev", dev):
                proto = str(r.get("protocol", "boot"))
                if proto not in (ROUTE_PROTO, "kernel"):
                    facts.foreign_routes.append((r["dst"], r.get("gateway"), proto))
        ours = {int(n["id"]) for n in _ip_json("nexthop", "show") if n.get("protocol") == "70"}
        used = {int(r["nhid"]) for r in _ip_json("route", "show") if "nhid" in r}
        facts.unused_nexthops = sorted(ours - used)
        facts.nexthops_in_use = bool(ours & used)
        if subnet is not None:
            for r in _ip_json("route", "show", "type", "blackhole", "exact", str(subnet)):
                proto = str(r.get("protocol", "boot"))
                if proto != ROUTE_PROTO:
                    facts.foreign_blackholes.append((r["dst"], proto, int(r.get("metric", 0))))
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        pass
    for item in ruleset or ():
        table = item.get("table")
        if isinstance(table, dict) and (table.get("family"), table.get("name")) == (
            "ip",
            "flannelish",
        ):
            facts.our_table = True
        chain = item.get("chain")
        if isinstance(chain, dict) and chain.get("name") in FLANNELD_CHAINS:
            facts.iptables_chains.append(f"{chain.get('table')} {chain.get('name')}")
    return facts
