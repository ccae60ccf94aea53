"""Every flanneld flag (docs/flannel-compat.md §10) parses, in Go's syntax and as
FLANNELD_*, and reaches the daemon's options; the Kubernetes subnet-manager flags end in
one error and exit 2."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from flannelish.cli import cli, etcd_options
from flannelish.cli.goflags import BOOL, FLAG, VALUE, GoFlagError, normalise
from flannelish.daemon import node as node_module

pytestmark = pytest.mark.unit


@pytest.fixture
def captured(monkeypatch):
    """Replace NodeDaemon so the command only builds its options."""
    seen: dict = {}

    class Recorder:
        def __init__(self, options, *args, **kwargs):
            seen["options"] = options

        def stop(self):
            pass

        def run(self):
            pass

    class Etcd:  # the flags as given (EtcdOptions would read and check the TLS files)
        @staticmethod
        def from_flags(**values):
            values["endpoints"] = values["endpoints"].split(",")
            return SimpleNamespace(**values)

    monkeypatch.setattr(node_module, "NodeDaemon", Recorder)
    monkeypatch.setattr(etcd_options, "EtcdOptions", Etcd)
    yield seen
    logging.getLogger().setLevel(logging.INFO)


def opts_of(args, env=None, captured=None):
    result = CliRunner().invoke(cli, ["daemon", *args], env=env or {})
    assert result.exit_code == 0, result.output
    return captured["options"]


# (flanneld's flag as a unit file writes it, check of the resulting DaemonOptions)
FLAGS = [
    ("-etcd-endpoints=http://198.18.0.254:2379",
     lambda o: o.etcd.endpoints == ["http://198.18.0.254:2379"]),
    ("--etcd-prefix=/my/net", lambda o: o.etcd.prefix == "/my/net"),
    ("-etcd-cafile=/tmp/ca.pem", lambda o: o.etcd.cafile == "/tmp/ca.pem"),
    ("-etcd-certfile=/tmp/c.pem", lambda o: o.etcd.certfile == "/tmp/c.pem"),
    ("-etcd-keyfile=/tmp/k.pem", lambda o: o.etcd.keyfile == "/tmp/k.pem"),
    ("-etcd-username=u", lambda o: o.etcd.username == "u"),
    ("-etcd-password=p", lambda o: o.etcd.password == "p"),
    ("-iface=eth1", lambda o: o.ifaces == ["eth1"]),
    ("-iface-regex=^eth", lambda o: o.iface_regexes == ["^eth"]),
    ("-iface-can-reach=198.18.0.254", lambda o: o.iface_can_reach == "198.18.0.254"),
    ("-public-ip=198.18.0.7", lambda o: o.public_ip == "198.18.0.7"),
    ("-public-ipv6=fd00::7", lambda o: True),  # accepted, not used yet (no IPv6 overlay)
    ("-subnet-file=/tmp/x/subnet.env", lambda o: o.subnet_file == Path("/tmp/x/subnet.env")),
    ("-subnet-lease-renew-margin=30", lambda o: o.renew_margin_minutes == 30),
    ("-ip-masq", lambda o: o.ip_masq and o.node_ops.ip_masq),
    ("-ip-masq-fully-random-disable", lambda o: o.node_ops.fully_random is False),
    ("-iptables-forward-rules=false", lambda o: o.node_ops.forward is False),
    ("-iptables-resync=9", lambda o: o.firewall_resync_seconds == 9.0),
    ("-ip-blackhole-route", lambda o: o.blackhole_route is True),
    ("-healthz-ip=127.0.0.1", lambda o: o.node_ops.healthz_ip == "127.0.0.1"),
    ("-healthz-port=8471", lambda o: o.node_ops.healthz_port == 8471),
    ("-net-config-path=/tmp/net-conf.json",
     lambda o: o.net_config_path == Path("/tmp/net-conf.json")),
    ("-v=2", lambda o: logging.getLogger().level == logging.DEBUG),
    ("-vmodule=main=3", lambda o: True),  # accepted, no effect
    ("-log_backtrace_at=main.go:10", lambda o: True),  # accepted, no effect
    ("--kube-subnet-mgr=false", lambda o: True),  # explicitly off: the etcd mode we run
]  # fmt: skip


@pytest.mark.parametrize(("arg", "check"), FLAGS, ids=[a for a, _ in FLAGS])
def test_every_flanneld_flag_parses(captured, arg, check):
    assert check(opts_of([arg], captured=captured))


@pytest.mark.parametrize(("arg", "check"), FLAGS, ids=[a for a, _ in FLAGS])
def test_every_flanneld_flag_in_the_other_go_spellings(captured, arg, check):
    """`-flag value`, `--flag value` and `--flag=value` (booleans: bare, =true, =false)."""
    name, eq, value = arg.lstrip("-").partition("=")
    if eq and value not in ("true", "false"):
        spellings = [[f"-{name}", value], [f"--{name}", value], [f"--{name}={value}"]]
    else:
        first = [f"--{name}={value}"] if eq else [f"--{name}"]
        spellings = [first, [f"-{name}={value or 'true'}"]]
    for args in spellings:
        assert check(opts_of(args, captured=captured)), args


@pytest.mark.parametrize(("arg", "check"), FLAGS, ids=[a for a, _ in FLAGS])
def test_every_flanneld_flag_as_environment_variable(captured, arg, check):
    name, eq, value = arg.lstrip("-").partition("=")
    env = {"FLANNELD_" + name.upper().replace("-", "_"): value if eq else "true"}
    assert check(opts_of([], env=env, captured=captured)), env


def test_booleans_take_go_values_and_the_command_line_wins(captured):
    o = opts_of(["--ip-masq=1"], env={"FLANNELD_IP_MASQ": "false"}, captured=captured)
    assert o.ip_masq is True
    o = opts_of(["-ip-masq=F", "-iptables-forward-rules=T"], captured=captured)
    assert o.ip_masq is False and o.node_ops.forward is True
    result = CliRunner().invoke(cli, ["daemon", "--ip-masq=yes"])
    assert result.exit_code == 2 and 'invalid boolean value "yes" for -ip-masq' in result.output


def test_defaults_are_flanneld_s(captured):
    o = opts_of([], captured=captured)
    assert o.node_ops.forward is True and o.node_ops.fully_random is True
    assert o.firewall_resync_seconds == 5.0 and o.blackhole_route is False
    assert o.iface_can_reach is None and o.net_config_path is None


def test_a_value_flag_takes_the_next_argument_and_needs_one(captured):
    o = opts_of(["-iface", "eth0", "-iface", "198.18.0.5", "-public-ip", "198.18.0.5"],
                captured=captured)  # fmt: skip
    assert o.ifaces == ["eth0", "198.18.0.5"] and o.public_ip == "198.18.0.5"
    result = CliRunner().invoke(cli, ["daemon", "-iface"])
    assert result.exit_code == 2 and "flag needs an argument: -iface" in result.output


def test_our_own_flags_take_go_syntax_too(captured):
    o = opts_of(["-resync-interval=2.5", "-vxlan-allow-any=true"], captured=captured)
    assert o.resync_seconds == 2.5 and o.node_ops.vxlan_allow_any is True


KUBE = [
    ["--kube-subnet-mgr"],
    ["-kube-subnet-mgr=true"],
    ["--kube-api-url=https://10.0.0.1:6443"],
    ["-kubeconfig-file", "/etc/kubernetes/kubelet.conf"],
    ["--kube-annotation-prefix=flannel.alpha.coreos.com"],
    ["--set-node-network-unavailable=false"],
]


@pytest.mark.parametrize("args", KUBE, ids=[" ".join(a) for a in KUBE])
def test_kubernetes_flags_exit_2_with_one_clear_error(captured, args):
    result = CliRunner().invoke(cli, ["daemon", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Kubernetes subnet manager is not supported" in lines[0]
    assert args[0].lstrip("-").split("=")[0] in lines[0]
    assert "options" not in captured  # no daemon was built


def test_kubernetes_mode_from_the_environment_is_refused_too(captured):
    result = CliRunner().invoke(cli, ["daemon"], env={"FLANNELD_KUBE_SUBNET_MGR": "true"})
    assert result.exit_code == 2 and "Kubernetes subnet manager" in result.output


def test_version_and_help_in_go_syntax(captured):
    for args in (["--version"], ["-version"], ["-version=true"]):
        result = CliRunner().invoke(cli, ["daemon", *args])
        assert result.exit_code == 0 and result.output.startswith("flannelish "), args
    for args in (["-h"], ["-help"], ["--help"]):
        result = CliRunner().invoke(cli, ["daemon", *args])
        assert result.exit_code == 0 and "--iface-can-reach" in result.output, args


def test_unknown_flags_are_still_refused(captured):
    result = CliRunner().invoke(cli, ["daemon", "-no-such-flag=1"])
    assert result.exit_code == 2 and "No such option" in result.output


def test_normalise_table():
    kinds = {"ip-masq": BOOL, "iface": VALUE, "version": FLAG}
    cases = [
        (["-ip-masq"], ["--ip-masq"]),
        (["--ip-masq=false"], ["--no-ip-masq"]),
        (["-ip-masq=0", "--ip-masq=t"], ["--no-ip-masq", "--ip-masq"]),
        (["-iface=eth0"], ["--iface=eth0"]),
        (["-iface", "-weird"], ["--iface=-weird"]),  # Go takes the next argument as is
        (["-version=false"], []),
        (["--no-ip-masq"], ["--no-ip-masq"]),  # click's own spelling passes through
        (["-iface=a", "stop", "-ip-masq"], ["--iface=a", "stop", "-ip-masq"]),  # Go stops
        (["--", "-ip-masq"], ["--", "-ip-masq"]),
        (["-help"], ["--help"]),
    ]
    for args, want in cases:
        assert normalise(args, kinds) == want, args
    with pytest.raises(GoFlagError):
        normalise(["-ip-masq=maybe"], kinds)
