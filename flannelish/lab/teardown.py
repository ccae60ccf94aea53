"""`flannelish lab down`: remove everything a lab made, by the record.

Works from the state file alone, so it also cleans up after a crashed
`lab up`, SIGKILLed daemons or a reboot: recorded processes are stopped by
PID only if they are still the same process (procs.is_ours); namespaces
are deleted by name, including any ``fl-<lab>-*`` leftover the record
missed.  Processes someone else started inside a lab namespace (e.g. a
`lab exec` shell) are reported, not killed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from flannelish.lab import names, procs
from flannelish.lab.state import STATE_FILE, LabState, ProcRecord
from flannelish.testing.netns import list_netns, netns_pids
from flannelish.testing.proc import run


@dataclass
class TeardownReport:
    stopped: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _unrecorded_lab_processes(state: LabState) -> list[ProcRecord]:
    """Processes inside the lab's namespaces whose command line names the lab's
    own directory (a daemon's --subnet-file, etcd's --data-dir): ours, even if
    `lab up` was killed between starting one and recording it."""
    found = []
    marker = f"{state.dir.rstrip('/')}/"
    recorded = {r.pid for r in state.procs()}
    existing = set(list_netns())
    for name in state.netns:
        if name not in existing:
            continue
        for pid in netns_pids(name):
            argv = procs.cmdline(pid) or []
            if pid not in recorded and any(marker in arg for arg in argv):
                found.append(procs.record(f"unrecorded process in {name}", pid, argv=argv))
    return found


def _delete_netns(name: str, report: TeardownReport) -> None:
    strangers = netns_pids(name)
    if strangers:
        report.warnings.append(
            f"processes {', '.join(map(str, strangers))} still run in {name}; "
            "they were not started by the lab, so they were left alone"
        )
    result = run(["ip", "netns", "del", name], check=False)
    if result.returncode == 0:
        report.netns.append(name)
    elif name in list_netns():
        report.warnings.append(f"could not delete {name}: {result.stderr.strip()}")


def remove_leftover_netns(lab: str, report: TeardownReport | None = None) -> TeardownReport:
    """Delete every fl-<lab>-* namespace (the prefix is unique to this lab by construction)."""
    report = report or TeardownReport()
    prefix = names.netns_prefix(lab)
    ul = names.underlay_netns(lab)
    # Pods and nodes before the underlay, so no veth outlives its bridge.
    leftovers = sorted((n for n in list_netns() if n.startswith(prefix)), key=lambda n: n == ul)
    for name in leftovers:
        _delete_netns(name, report)
    return report


def teardown(state: LabState, keep_logs: bool = False, remove_dir: bool = True) -> TeardownReport:
    report = TeardownReport()
    records = state.procs()
    records += _unrecorded_lab_processes(state)
    running = [r for r in records if procs.is_ours(r)]
    report.warnings += procs.stop_all(running)
    report.stopped = [f"{r.role} (pid {r.pid})" for r in running]
    # WireGuard nodes: the userspace device outlives its daemon; stop it after the daemon.
    from flannelish.kernel.wireguard_go import stop_node_wireguard_go

    for node in state.nodes:
        for dev in ("flannel-wg", "flannel-wg-v6"):
            pid = stop_node_wireguard_go(Path(node.subnet_file).parent, dev)
            if pid is not None:
                report.stopped.append(f"wireguard-go {node.name} {dev} (pid {pid})")
    existing = set(list_netns())
    for name in reversed(state.netns):
        if name in existing:
            _delete_netns(name, report)
    remove_leftover_netns(state.spec.name, report)
    directory = state.path
    if keep_logs:
        _keep_only_logs(directory)
    elif remove_dir:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        clear_dir(directory)
    return report


def clear_dir(directory: Path) -> None:
    """Empty the lab directory but keep it (its flock may be held by the caller)."""
    if not directory.exists():
        return
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _keep_only_logs(directory: Path) -> None:
    """After a failed `up`: keep the state file and every *.log, drop data and sockets."""
    if not directory.exists():
        return
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif not (path.name == STATE_FILE or path.suffix == ".log"):
            path.unlink(missing_ok=True)
