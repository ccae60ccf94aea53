"""subnet.env: Flannel's exact format, atomic 0644 write, lenient read, the CNI plugin's read."""

from __future__ import annotations

import os
import stat
from ipaddress import IPv4Network, IPv6Network

import pytest

from flannelish.errors import ConfigError
from flannelish.subnet_env import (
    IncompleteSubnetEnv,
    PluginEnv,
    SubnetEnv,
    previous_subnet,
    read_plugin_env,
    read_subnet_env,
    read_subnet_env_values,
    write_subnet_env,
)

pytestmark = pytest.mark.unit

VECTOR = SubnetEnv(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.34.0/24"), 1450, True)


def test_written_file_matches_flannel_test_vector_with_mode_0644(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    old = os.umask(0o077)
    try:
        write_subnet_env(path, VECTOR)
    finally:
        os.umask(old)
    assert path.read_text() == (
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["subnet.env"]  # no temp file left


def test_round_trip_and_previous_subnet(tmp_path):
    path = tmp_path / "subnet.env"
    write_subnet_env(path, VECTOR)
    assert read_subnet_env(path) == VECTOR
    assert previous_subnet(path) == IPv4Network("10.5.34.0/24")


def test_missing_file_reads_as_none(tmp_path):
    assert read_subnet_env(tmp_path / "nope") is None
    assert previous_subnet(tmp_path / "nope") is None


def test_bad_value_names_key_and_file(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_SUBNET=10.5.300.1/24\nFLANNEL_MTU=1450\n")
    with pytest.raises(ConfigError, match="FLANNEL_SUBNET"):
        read_subnet_env(path)
    assert previous_subnet(path) is None


def test_list_valued_previous_subnet_is_ignored_like_flannel(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_SUBNET=10.5.34.1/24,10.5.35.1/24\nFLANNEL_MTU=1450\n")
    assert previous_subnet(path) is None


def test_replacing_keeps_readers_seeing_a_whole_file(tmp_path):
    path = tmp_path / "subnet.env"
    write_subnet_env(path, VECTOR)
    inode = path.stat().st_ino
    write_subnet_env(
        path, SubnetEnv(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.7.0/24"), 1450, False)
    )
    assert path.stat().st_ino != inode  # renamed into place, not rewritten
    assert "FLANNEL_SUBNET=10.5.7.1/24" in path.read_text()


def test_plugin_reads_what_the_daemon_wrote(tmp_path):
    path = tmp_path / "subnet.env"
    write_subnet_env(path, VECTOR)
    assert read_plugin_env(path) == PluginEnv(
        [IPv4Network("10.5.0.0/16")], [IPv4Network("10.5.34.0/24")], 1450, True
    )


@pytest.mark.parametrize("v4", [True, False], ids=["dual-stack", "ipv6-only"])
def test_plugin_reads_ipv6_subnets_written_by_the_daemon(tmp_path, v4):
    path = tmp_path / "subnet.env"
    write_subnet_env(
        path,
        SubnetEnv(
            IPv4Network("10.244.0.0/16") if v4 else None,
            IPv4Network("10.244.7.0/24") if v4 else None,
            1430,
            False,
            IPv6Network("fd44::/48"),
            IPv6Network("fd44:0:0:7::/64"),
        ),
    )
    env = read_plugin_env(path)
    v4nets = [IPv4Network("10.244.0.0/16")] if v4 else []
    v4subs = [IPv4Network("10.244.7.0/24")] if v4 else []
    assert env.networks == [*v4nets, IPv6Network("fd44::/48")]
    assert env.subnets == [*v4subs, IPv6Network("fd44:0:0:7::/64")]
    assert env.subnet == env.subnets[0]


def test_plugin_takes_every_network_of_a_list_once(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text(
        "# written by hand\nFLANNEL_NETWORK=10.5.0.0/16, fd00::/48,10.5.0.0/16\n"
        "FLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n"
    )
    env = read_plugin_env(path)
    assert env.networks == [IPv4Network("10.5.0.0/16"), IPv6Network("fd00::/48")]
    assert (env.mtu, env.ipmasq) == (1400, False)


def test_plugin_names_missing_keys_and_rejects_bad_values(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_MTU=\n")
    with pytest.raises(IncompleteSubnetEnv) as err:
        read_plugin_env(path)
    assert err.value.missing == [
        "FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET",
        "FLANNEL_MTU",
        "FLANNEL_IPMASQ",
    ]
    path.write_text("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_IPV6_SUBNET=10.5.1.1/24\n")
    path.write_text(path.read_text() + "FLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n")
    with pytest.raises(ValueError, match="not an IPv6 subnet"):
        read_plugin_env(path)
    path.write_text(
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\n"
        "FLANNEL_MTU=big\nFLANNEL_IPMASQ=true\n"
    )
    with pytest.raises(ValueError):
        read_plugin_env(path)
    with pytest.raises(FileNotFoundError):
        read_plugin_env(tmp_path / "absent")


def test_an_endless_file_is_refused_not_read_into_memory():
    with pytest.raises(OSError, match=r"not a subnet\.env"):
        read_subnet_env_values("/dev/zero")
