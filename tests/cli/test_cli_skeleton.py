import pytest
from click.testing import CliRunner

from flannelish.cli import cli

pytestmark = pytest.mark.unit


def test_help_lists_every_operator_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("config", "leases", "daemon", "lab", "verify", "status", "install-cni"):
        assert command in result.stdout


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
