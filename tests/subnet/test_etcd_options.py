"""EtcdOptions validation and the --etcd-* click flags (flanneld names, FLANNELD_* env)."""

from __future__ import annotations

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
    for name in ("endpoints", "prefix", "cafile", "certfile", "keyfile", "username", "password"):
        assert f"--etcd-{name}" in out
        assert f"FLANNELD_ETCD_{name.upper()}" in out
