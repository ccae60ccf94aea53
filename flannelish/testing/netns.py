"""Network namespaces with a per-run name prefix that are always removed.

Names look like ``flt<pid>-<name>``: the owner's PID is part of the prefix,
so leftovers of a crashed earlier run (whose PID is gone) can be recognised
and removed without touching namespaces of a run that is still going.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path

from flannelish.testing.proc import pid_alive, run

NETNS_DIR = Path("/run/netns")


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_pids(name: str) -> list[int]:
    result = run(["ip", "netns", "pids", name], check=False)
    return [int(pid) for pid in result.stdout.split()]


def delete_netns(name: str, kill_processes: bool = True) -> None:
    """Remove a namespace; processes still inside it were started by us and are ended."""
    if kill_processes:
        for pid in netns_pids(name):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    run(["ip", "netns", "del", name], check=False)


class NetnsFactory:
    """Creates namespaces under one prefix and removes every one of them in cleanup()."""

    _sequence = 0  # distinguishes factories of one process (one per test)

    def __init__(self, base: str = "flt", owner_pid: int | None = None) -> None:
        if not re.fullmatch(r"[a-z]{2,6}", base):
            raise ValueError("namespace prefix base must be 2-6 lower-case letters")
        NetnsFactory._sequence += 1
        self.base = base
        self.prefix = f"{base}{owner_pid or os.getpid()}-{NetnsFactory._sequence}-"
        self.created: list[str] = []

    def name(self, short: str) -> str:
        return f"{self.prefix}{short}"

    def create(self, short: str) -> str:
        name = self.name(short)
        run(["ip", "netns", "add", name])
        self.created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def cleanup(self) -> None:
        for name in reversed(self.created):
            delete_netns(name)
        self.created.clear()

    def remove_leftovers(self) -> list[str]:
        """Delete namespaces of earlier runs with the same base whose owner is dead."""
        return remove_stale_netns(self.base)


def remove_stale_netns(base: str, names: Iterable[str] | None = None) -> list[str]:
    pattern = re.compile(rf"{re.escape(base)}(\d+)-")
    removed = []
    for name in names if names is not None else list_netns():
        match = pattern.match(name)
        if match and not pid_alive(int(match.group(1))):
            delete_netns(name)
            removed.append(name)
    return removed
