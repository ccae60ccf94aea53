"""Lab tests drive the real `flannelish` command, each lab in a temp state dir."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flannelish.lab import names
from flannelish.testing.netns import list_netns

FLANNELISH = str(Path(sys.executable).parent / "flannelish")
_counter = 0


@dataclass
class LabCli:
    name: str
    state_dir: Path

    def lab(self, sub: str, *rest: str, env: dict[str, str] | None = None):
        """`flannelish lab SUB --name <lab> --state-dir <tmp> REST...`, as a user runs it."""
        return self._run(["lab", sub], rest, env)

    def verify(self, *rest: str):
        return self._run(["verify"], rest, None)

    def argv(self, command: list[str], *rest: str) -> list[str]:
        return [FLANNELISH, *command, "--name", self.name, "--state-dir", str(self.state_dir),
                *rest]  # fmt: skip

    def _run(self, command: list[str], rest: tuple[str, ...], env: dict[str, str] | None):
        return subprocess.run(
            self.argv(command, *rest),
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
            check=False,
        )

    @property
    def dir(self) -> Path:
        return self.state_dir / self.name

    def namespaces(self) -> list[str]:
        return [n for n in list_netns() if n.startswith(names.netns_prefix(self.name))]


TEMP_PREFIX = "fll-"
_NAME = re.compile(r"t(\d+)x\d+")


@pytest.fixture(scope="session", autouse=True)
def _remove_labs_of_crashed_runs() -> None:
    """Labs left by an earlier test run that was killed (its PID is gone) are torn down
    from their state files: only their recorded processes are stopped."""
    from flannelish.lab.state import load_state
    from flannelish.lab.teardown import teardown
    from flannelish.testing.proc import pid_alive

    for lab_dir in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*/t*x*"):
        match = _NAME.fullmatch(lab_dir.name)
        if not match or pid_alive(int(match.group(1))):
            continue
        try:
            state = load_state(lab_dir)
        except Exception:  # damaged: nothing recorded to stop, just remove it
            state = None
        if state is not None:
            teardown(state)
        shutil.rmtree(lab_dir.parent, ignore_errors=True)


@pytest.fixture
def lab_cli() -> Iterator[LabCli]:
    """A unique lab name and a short temp state dir; whatever happens, the lab is removed."""
    global _counter
    _counter += 1
    # Short: the daemons' unix sockets live inside the state dir (108-byte limit).
    state_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    lab = LabCli(f"t{os.getpid()}x{_counter}", state_dir)  # the PID lets a later run spot leftovers
    try:
        yield lab
    finally:
        lab.lab("down")
        shutil.rmtree(state_dir, ignore_errors=True)
