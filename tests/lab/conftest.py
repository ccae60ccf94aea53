"""Lab tests drive the real `flannelish` command, each lab in a temp state dir."""

from __future__ import annotations

import os
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
            env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false", **(env or {})},
            check=False,
        )

    @property
    def dir(self) -> Path:
        return self.state_dir / self.name

    def namespaces(self) -> list[str]:
        return [n for n in list_netns() if n.startswith(names.netns_prefix(self.name))]


@pytest.fixture
def lab_cli() -> Iterator[LabCli]:
    """A unique lab name and a short temp state dir; whatever happens, the lab is removed."""
    global _counter
    _counter += 1
    # Short: the daemons' unix sockets live inside the state dir (108-byte limit).
    state_dir = Path(tempfile.mkdtemp(prefix="fll-"))
    lab = LabCli(f"t{os.getpid() % 100000}x{_counter}", state_dir)
    try:
        yield lab
    finally:
        lab.lab("down")
        shutil.rmtree(state_dir, ignore_errors=True)
