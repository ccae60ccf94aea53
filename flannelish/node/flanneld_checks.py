"""`flannelish doctor`'s flanneld check (pure: NodeFacts -> findings).

flanneld running beside the flannelish daemon in this network namespace is an
error (both rewrite one device, one set of peer entries and routes), flanneld
alone a warning (stop it before flannelish starts).  Once it stopped: its
leftovers, each with the command that removes it.  The facts come from
:mod:`flannelish.node.flanneld_facts`.
"""

from __future__ import annotations

from flannelish.node.checks import Finding, Severity
from flannelish.node.facts import NodeFacts


def check_flanneld(facts: NodeFacts) -> list[Finding]:
    """flanneld beside the flannelish daemon, or flanneld's leftovers (README, migration)."""
    fl = facts.flanneld
    if fl is None:
        return []
    out: list[Finding] = []
    pids = ", ".join(map(str, fl.flanneld_pids))
    if fl.flanneld_pids and fl.daemon_pids:
        out.append(
            Finding(
                Severity.ERROR,
                "flanneld",
                f"flanneld (PID {pids}) and the flannelish daemon "
                f"(PID {', '.join(map(str, fl.daemon_pids))}) both run in this network "
                "namespace: they rewrite the same device, peer entries and routes",
                "stop flanneld for good: systemctl disable --now flanneld "
                "(flannelish takes over its subnet, device and peers without loss)",
            )
        )
    elif fl.flanneld_pids:
        out.append(
            Finding(
                Severity.WARNING,
                "flanneld",
                f"flanneld (PID {pids}) runs in this network namespace",
                "to migrate: systemctl disable --now flanneld, then start flannelish with "
                "the same flags (README, Migrating from flanneld); never run both",
            )
        )
    if fl.flanneld_pids and fl.our_table and not fl.daemon_pids:
        out.append(
            Finding(
                Severity.WARNING,
                "flanneld",
                "table ip flannelish, left by a stopped flannelish daemon, is still there "
                "beside flanneld: nobody updates its VXLAN peer set, so nodes that join "
                "later are dropped",
                "nft delete table ip flannelish (not `flannelish uninstall`: that also "
                "deletes the device flanneld uses)",
            )
        )
    if fl.flanneld_pids and fl.unused_nexthops and not fl.daemon_pids:
        ids = fl.unused_nexthops
        out.append(
            Finding(
                Severity.INFO,
                "flanneld",
                f"{len(ids)} nexthop object(s) of flannelish's (protocol 70) are left beside "
                "flanneld, unused: flanneld replaced the routes that went through them",
                "ip nexthop flush protocol 70"
                if not fl.nexthops_in_use
                else "; ".join(f"ip nexthop del id {i}" for i in ids[:20]),
            )
        )
    if fl.flanneld_pids:
        return out  # what flanneld has in the kernel now is not a leftover
    for dst, gw, proto in fl.foreign_routes:
        dev = facts.overlay6() if ":" in dst else facts.overlay()
        out.append(
            Finding(
                Severity.WARNING,
                "flanneld",
                f"route {dst} via {gw or '-'} dev {dev.name if dev else '?'} (protocol {proto}) "
                "is not flannelish's: a leftover of flanneld for a peer that is gone?",
                f"if no lease holds {dst}: ip route del {dst} proto {proto}",
            )
        )
    for dst, proto, metric in fl.foreign_blackholes:
        if metric == 0:
            out.append(
                Finding(
                    Severity.WARNING,
                    "flanneld",
                    f"blackhole route to our subnet {dst} (protocol {proto}, metric 0, "
                    "flanneld's --ip-blackhole-route): it hides the CNI bridge's route to "
                    "the pods when the bridge was addressed after it",
                    f"ip route del blackhole {dst} proto {proto} "
                    "(flannelish's own has the lowest preference)",
                )
            )
    if fl.iptables_chains:
        out.append(
            Finding(
                Severity.INFO,
                "flanneld",
                f"flanneld's iptables chains are still there ({', '.join(fl.iptables_chains)}); "
                "they do what table ip flannelish does",
                "after the migration: iptables -t nat -D POSTROUTING -m comment --comment "
                '"flanneld masq" -j FLANNEL-POSTRTG; iptables -D FORWARD -m comment --comment '
                '"flanneld forward" -j FLANNEL-FWD; then -F and -X each chain',
            )
        )
    return out
