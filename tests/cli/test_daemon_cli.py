"""`flannelish daemon` flags: flanneld names, FLANNELD_* env, validation, help (no daemon run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flannelish.cli import cli
from flannelish.daemon import node as node_module

pytestmark = pytest.mark.unit


@pytest.fixture
def captured(monkeypatch):
    """Replace NodeDaemon so the command only builds its options."""
    seen = {}

    class Recorder:
        def __init__(self, options, *args, **kwargs):
            seen["options"] = options

        def stop(self):
            pass

        def run(self):
            pass

    monkeypatch.setattr(node_module, "NodeDaemon", Recorder)
    return seen


def test_flags_reach_the_daemon_options(captured, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["daemon", "--etcd-endpoints", "http://198.18.0.254:2379", "--iface", "eth1",
         "--iface", "198.18.0.5", "--iface-regex", "^eth", "--public-ip", "203.0.113.7",
         "--subnet-file", str(tmp_path / "s.env"), "--ip-masq", "--subnet-lease-renew-margin",
         "30", "--resync-interval", "2.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    opts = captured["options"]
    assert opts.ifaces == ["eth1", "198.18.0.5"] and opts.iface_regexes == ["^eth"]
    assert opts.public_ip == "203.0.113.7" and opts.ip_masq is True
    assert opts.renew_margin_minutes == 30 and opts.resync_seconds == 2.5
    assert opts.subnet_file == tmp_path / "s.env"
    assert opts.socket_path == tmp_path / "flannelish.sock"
    assert opts.etcd.endpoints == ["http://198.18.0.254:2379"]
    assert opts.node_ops.ip_masq is True


def test_flanneld_environment_variables_are_honoured(captured):
    env = {"FLANNELD_IFACE": "eth0,eth1", "FLANNELD_SUBNET_FILE": "/tmp/x/subnet.env",
           "FLANNELD_IP_MASQ": "true", "FLANNELD_ETCD_PREFIX": "/my/net"}  # fmt: skip
    result = CliRunner().invoke(cli, ["daemon"], env=env)
    assert result.exit_code == 0, result.output
    opts = captured["options"]
    assert opts.ifaces == ["eth0", "eth1"] and opts.ip_masq is True
    assert opts.subnet_file == Path("/tmp/x/subnet.env") and opts.etcd.prefix == "/my/net"


@pytest.mark.parametrize(
    "args",
    [["--subnet-lease-renew-margin", "0"], ["--subnet-lease-renew-margin", "1440"],
     ["--resync-interval", "0"], ["--log-format", "xml"]],
)  # fmt: skip
def test_out_of_range_flags_are_usage_errors(captured, args):
    result = CliRunner().invoke(cli, ["daemon", *args])
    assert result.exit_code == 2
    assert "options" not in captured


def test_help_documents_every_exit_status():
    result = CliRunner().invoke(cli, ["daemon", "--help"])
    assert result.exit_code == 0
    for line in ("0  stopped by SIGTERM/SIGINT", "3  invalid network config", "6  lease lost",
                 "7  a kernel (netlink) operation failed"):  # fmt: skip
        assert line in result.stdout
    assert "FLANNELD_IFACE" in result.stdout and "--subnet-lease-renew-margin" in result.stdout
