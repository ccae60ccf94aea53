"""Start long-lived lab processes detached, and stop them only while they are ours.

A lab outlives the `flannelish lab up` command that built it, so daemons run
in their own session (Ctrl-C in the terminal that ran `make lab` must not
kill the lab).  Stopping goes by the recorded PID, but only after checking
that the PID still names the same process: same boot, same start time, same
command line.  A PID recycled after a crash or reboot is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from flannelish.lab.state import ProcRecord
from flannelish.testing.proc import in_netns

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] == "Z"


def record(role: str, pid: int, log: str = "", argv: Sequence[str] | None = None) -> ProcRecord:
    """Describe a process we just started (call right after spawning it).

    Pass the argv it was started with: /proc/<pid>/cmdline is empty for a
    moment while `ip netns exec` execs the real program.
    """
    return ProcRecord(
        role=role,
        pid=pid,
        starttime=starttime(pid) or 0,
        boot_id=boot_id(),
        cmdline=list(argv) if argv is not None else cmdline(pid) or [],
        log=log,
    )


def is_ours(rec: ProcRecord) -> bool:
    """True while the recorded process is still running (and is still that process)."""
    if rec.boot_id != boot_id():
        return False
    if starttime(rec.pid) != rec.starttime or zombie(rec.pid):
        return False
    # `ip netns exec` execs the command, so the PID keeps its start time but
    # its command line changes once, from `ip netns exec ...` to the program.
    # The recorded one was read right after spawning; accept either form.
    # (Empty while an exec is in progress: start time and boot already matched.)
    current = cmdline(rec.pid)
    if current is None:
        return False
    return not current or current == rec.cmdline or _tail_matches(current, rec.cmdline)


def _tail_matches(current: list[str], recorded: list[str]) -> bool:
    if recorded[:3] == ["ip", "netns", "exec"] and len(recorded) > 4:
        program_args = recorded[5:]
        return current[-len(program_args) :] == program_args if program_args else True
    return False


def spawn(
    argv: Sequence[str],
    netns: str | None,
    log: Path,
    role: str,
    extra_env: dict[str, str] | None = None,
) -> ProcRecord:
    """Start a detached process (own session, output to `log`) and record it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(extra_env or {})
    full = in_netns(netns, argv)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    rec = record(role, proc.pid, str(log), argv=full)
    # Never wait() on it: the process belongs to the lab, not to this command.
    # Drop the Popen so Python does not warn about a child still running.
    proc.returncode = 0
    return rec


def stop_all(records: Sequence[ProcRecord], timeout: float = 3.0) -> list[str]:
    """SIGTERM every live recorded process at once, SIGKILL stragglers.

    Returns one line per process that was ours and had to be killed hard.
    """
    live = [r for r in records if is_ours(r)]
    for rec in live:
        _signal(rec, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        _reap(live)
        live = [r for r in live if is_ours(r)]
        if live:
            time.sleep(0.02)
    killed = []
    for rec in live:
        if is_ours(rec):
            _signal(rec, signal.SIGKILL)
            killed.append(f"{rec.role} (pid {rec.pid}) did not stop on SIGTERM; killed")
    end = time.monotonic() + 2.0
    while any(is_ours(r) for r in live) and time.monotonic() < end:
        _reap(live)
        time.sleep(0.02)
    return killed


def _signal(rec: ProcRecord, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, sig)


def _reap(records: Sequence[ProcRecord]) -> None:
    """Collect exit statuses of processes that happen to be our children (same command)."""
    for rec in records:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(rec.pid, os.WNOHANG)
