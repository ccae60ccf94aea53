"""EtcdOptions validation and the --etcd-* click flags (flanneld names, FLANNELD_* env)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from flannelish.cli.etcd_options import etcd_options
from flannelish.errors import ConfigError
from flannelish.subnet.etcdstore import (
    DEFAULT_PREFIX,
    EtcdOptions,
    normalize_prefix,
    parse_endpoint,
)

pytestmark = pytest.mark.unit


@click.command()
@etcd_options
def _show(etcd: EtcdOptions) -> None:
    click.echo(f"{','.join(etcd.endpoints)}|{etcd.prefix}|{etcd.username}|{etcd.password}")


def test_defaults_are_flanneld_defaults():
    opts = EtcdOptions.from_flags()
    assert opts.endpoints == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    assert opts.prefix == DEFAULT_PREFIX == "/coreos.com/network"


def test_endpoint_forms_are_normalized():
    opts = EtcdOptions.from_flags(" http://10.0.0.1:2379 , https://etcd.example:2380,10.0.0.2 ")
    assert opts.endpoints == [
        "http://10.0.0.1:2379",
        "https://etcd.example:2380",
        "http://10.0.0.2:2379",
    ]
    assert parse_endpoint("https://[fd00::1]:2379").netloc == "[fd00::1]:2379"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"endpoints": ""}, "--etcd-endpoints is empty"),
        ({"endpoints": "unix:///run/etcd.sock"}, "must start with http:// or https://"),
        ({"endpoints": "http://10.0.0.1:99999"}, "invalid URL"),
        ({"endpoints": "http://10.0.0.1:2379/v2"}, "must not have a path"),
        ({"certfile": "/etc/hostname"}, "--etcd-certfile needs --etcd-keyfile"),
        ({"keyfile": "/etc/hostname"}, "--etcd-keyfile needs --etcd-certfile"),
        ({"cafile": "/nonexistent/ca.pem"}, "--etcd-cafile: cannot read '/nonexistent/ca.pem'"),
        ({"cafile": "/etc"}, "it is a directory"),
        ({"cafile": "/etc/hostname"}, "--etcd-cafile: '/etc/hostname' is not a PEM certificate"),
        (
            {"certfile": "/etc/hostname", "keyfile": "/etc/hostname"},
            "--etcd-certfile: '/etc/hostname' is not a PEM certificate",
        ),
        ({"username": "root"}, "only --etcd-username is set"),
        ({"password": "pw"}, "only --etcd-password is set"),
        ({"prefix": "///"}, "--etcd-prefix is empty"),
    ],
)
def test_bad_flags_are_config_errors_naming_the_flag(kwargs, expected):
    with pytest.raises(ConfigError, match=None) as info:
        EtcdOptions.from_flags(**kwargs)
    assert expected in str(info.value)


def test_prefix_is_joined_like_flannel():
    assert normalize_prefix("coreos.com//network/") == "/coreos.com/network"
    assert normalize_prefix("/x") == "/x"


def test_password_is_not_in_repr():
    opts = EtcdOptions.from_flags(username="root", password="s3cret")
    assert "s3cret" not in repr(opts)


def test_flags_come_from_flanneld_environment_variables():
    env = {
        "FLANNELD_ETCD_ENDPOINTS": "http://10.1.1.1:2379",
        "FLANNELD_ETCD_PREFIX": "/my/net",
        "FLANNELD_ETCD_USERNAME": "u",
        "FLANNELD_ETCD_PASSWORD": "p",
    }
    result = CliRunner().invoke(_show, [], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "http://10.1.1.1:2379|/my/net|u|p"


def test_command_line_flag_wins_over_environment():
    result = CliRunner().invoke(
        _show,
        ["--etcd-endpoints", "http://10.2.2.2:2379"],
        env={"FLANNELD_ETCD_ENDPOINTS": "http://10.1.1.1:2379"},
    )
    assert result.stdout.startswith("http://10.2.2.2:2379|")


def test_help_lists_every_flanneld_flag_and_its_env_var():
    out = CliRunner().invoke(_show, ["--help"]).stdout
    for name in (
        "endpoints",
        "prefix",
        "cafile",
        "certfile",
        "keyfile",
        "username",
        "password",
        "password-file",
    ):
        assert f"--etcd-{name}" in out
        assert f"FLANNELD_ETCD_{name.upper().replace('-', '_')}" in out


# -- --etcd-password-file ----------------------------------


def test_password_file_gives_the_password_without_its_newline(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    opts = EtcdOptions.from_flags(username="u", password_file=str(secret))
    assert opts.password == "s3cret"
    secret.write_text("with spaces \r\n")
    assert (
        EtcdOptions.from_flags(username="u", password_file=str(secret)).password == "with spaces "
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"a\nb\n", "more than one line"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x" * 5000, "larger than 4096 bytes"),
    ],
)
def test_unusable_password_files_are_config_errors(tmp_path, content, expected):
    secret = tmp_path / "pw"
    secret.write_bytes(content)
    with pytest.raises(ConfigError, match=expected):
        EtcdOptions.from_flags(username="u", password_file=str(secret))
    with pytest.raises(ConfigError, match="cannot read"):
        EtcdOptions.from_flags(username="u", password_file=str(tmp_path / "missing"))


def test_password_and_password_file_together_are_refused(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("a")
    with pytest.raises(ConfigError, match="both set"):
        EtcdOptions.from_flags(username="u", password="b", password_file=str(secret))


def test_password_file_from_flag_or_environment_and_no_warning(tmp_path, caplog):
    secret = tmp_path / "pw"
    secret.write_text("fromfile\n")
    for args, env in (
        (["--etcd-username", "u", "--etcd-password-file", str(secret)], {}),
        (["--etcd-username", "u"], {"FLANNELD_ETCD_PASSWORD_FILE": str(secret)}),
        (["--etcd-username", "u"], {"FLANNELD_ETCD_PASSWORD": "fromfile"}),
    ):
        caplog.clear()
        result = CliRunner().invoke(_show, args, env=env)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().endswith("|u|fromfile")
        assert not [r for r in caplog.records if "visible" in r.getMessage()]


def test_password_on_the_command_line_works_but_logs_a_warning(caplog):
    result = CliRunner().invoke(_show, ["--etcd-username", "u", "--etcd-password", "pw"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("|u|pw")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "/proc/<pid>/cmdline" in warnings[0].getMessage()
    assert "pw" not in warnings[0].getMessage().replace("password", "")


def test_password_file_keeps_the_password_out_of_proc_cmdline(tmp_path):
    """A real process: what /proc/<pid>/cmdline shows for each way of passing it."""
    import os
    import subprocess
    import sys

    secret = tmp_path / "pw"
    secret.write_text("TOPSECRET-1\n")
    code = (
        "import os, time, click; from flannelish.cli.etcd_options import etcd_options\n"
        "@click.command()\n@etcd_options\n"
        "def main(etcd):\n"
        "    print(etcd.password == os.environ['WANT'], flush=True)\n"
        "    time.sleep(30)\n"
        "main()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--etcd-username", "u", "--etcd-password-file", str(secret)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "WANT": "TOPSECRET-1"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "True"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"TOPSECRET" not in cmdline and str(secret).encode() in cmdline
    finally:
        proc.kill()
        proc.wait(timeout=5)
