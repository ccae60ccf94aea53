"""Bad input to the lab commands: one precise line, the right exit status, nothing built."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from flannelish.cli import cli
from flannelish.lab.state import LabSpec, LabState, NodeState

pytestmark = pytest.mark.unit


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lab", "up", "--name", "Bad-Name"], "invalid lab name 'Bad-Name'"),
        (["lab", "up", "--nodes", "0"], "--nodes must be between 1 and 50, not 0"),
        (["lab", "up", "--pods-per-node", "99"], "--pods-per-node must be between 0 and 50"),
    ],
)
def test_invalid_lab_up_arguments_are_config_errors_and_build_nothing(tmp_path, args, message):
    result = invoke(*args, "--state-dir", str(tmp_path))
    assert result.exit_code == 3, result.output
    assert message in result.output
    assert list(tmp_path.iterdir()) == []
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unknown_backend_is_a_usage_error():
    result = invoke("lab", "up", "--backend", "udp")
    assert result.exit_code == 2
    assert "'udp' is not one of 'vxlan', 'host-gw'" in result.output


def test_a_state_dir_too_long_for_unix_sockets_is_refused(tmp_path):
    deep = tmp_path / ("d" * 90)
    result = invoke("lab", "up", "--state-dir", str(deep))
    assert result.exit_code == 1
    assert "too long for the daemons' unix sockets" in result.output


@pytest.mark.parametrize(
    "command", [["lab", "check"], ["verify"], ["lab", "exec", "node1", "--", "true"]]
)
def test_commands_on_a_missing_lab_say_how_to_start_one(tmp_path, command):
    result = invoke(*command[:2], "--name", "nolab", "--state-dir", str(tmp_path), *command[2:])
    assert result.exit_code == 8, result.output
    assert "no lab named 'nolab'" in result.output and "flannelish lab up" in result.output


def test_lab_down_of_a_missing_lab_succeeds_and_says_so(tmp_path):
    result = invoke("lab", "down", "--name", "nolab", "--state-dir", str(tmp_path))
    assert result.exit_code == 0
    assert "nothing to do" in result.output


def test_exec_into_an_unknown_target_names_the_known_ones(tmp_path):
    state = LabState(spec=LabSpec(name="x1"), dir=str(tmp_path / "x1"), phase="up")
    state.nodes.append(NodeState("node1", "fl-x1-node1", "198.18.0.1", "d", "s", "c"))
    state.save()
    result = invoke(
        "lab", "exec", "--name", "x1", "--state-dir", str(tmp_path), "node7", "--", "true"
    )
    assert result.exit_code == 3
    assert "no node or pod named 'node7'" in result.output and "node1" in result.output


def test_exec_without_a_command_is_a_usage_error(tmp_path):
    result = invoke("lab", "exec", "--state-dir", str(tmp_path), "node1", "--")
    assert result.exit_code == 2


def test_the_lab_commands_module_imports_no_heavy_dependency():
    import subprocess
    import sys

    code = (
        "import sys; import flannelish.cli.lab; "
        "print(any(m.split('.')[0] in ('rich', 'scapy', 'pyroute2') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lab_up_as_a_normal_user_says_it_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = invoke("lab", "up", "--state-dir", str(tmp_path))
    assert result.exit_code == 8
    assert "the lab needs root" in result.output
    assert list(tmp_path.iterdir()) == []
