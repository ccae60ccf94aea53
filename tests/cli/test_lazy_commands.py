"""Subcommands load lazily: the table in flannelish.cli names every command exactly once."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

import flannelish.cli as cli_pkg
from flannelish.cli import _COMMAND_MODULES, cli

pytestmark = pytest.mark.unit


def test_every_command_module_is_in_the_table_with_exactly_its_commands():
    seen: dict[str, str] = {}
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        module = importlib.import_module(f"flannelish.cli.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            assert command.name not in seen, f"{command.name} defined twice"
            seen[command.name] = info.name
    assert seen == _COMMAND_MODULES


def test_help_lists_every_command_and_an_unknown_one_is_a_usage_error():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in _COMMAND_MODULES:
        assert f"  {name} " in result.output
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_daemon_help_does_not_load_the_other_commands():
    code = (
        "import sys\n"
        "from flannelish.cli import cli\n"
        "try:\n"
        "    cli.main(['daemon', '--help'], prog_name='flannelish')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('flannelish.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip().splitlines()[-1]
    assert "flannelish.cli.daemon" in loaded
    for other in ("lab", "policy", "leases", "cni_install"):
        assert f"flannelish.cli.{other}'" not in loaded
