"""The operator CLI against a real etcd: config put/get, leases, reserve, unreserve."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from click.testing import CliRunner
from lease_helpers import CONFIG, key_json, node_attrs

from flannelish.cli import cli
from flannelish.subnet.lease import LeaseAttrs
from flannelish.subnet.manager import SubnetManager

pytestmark = pytest.mark.etcd

KEY = "/coreos.com/network/subnets/10.244.9.0-24"
FLANNELISH = str(Path(sys.executable).parent / "flannelish")


@pytest.fixture
def run(etcd):
    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, [*args, "--etcd-endpoints", etcd.client_url], input=input)

    return invoke


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_config_put_validates_stores_exact_bytes_and_get_prints_them(run, tmp_path):
    path = tmp_path / "net.json"
    path.write_bytes(CONFIG)
    result = run("config", "put", str(path))
    assert result.exit_code == 0, result.output
    assert "10.244.1.0..10.244.255.0 (255)" in result.stdout
    assert "backend vxlan" in result.stdout
    got = run("config", "get")
    assert got.exit_code == 0 and got.stdout == CONFIG.decode() + "\n"


def test_config_put_from_stdin(run, etcd):
    result = run("config", "put", "-", input='{"Network":"10.244.0.0/16"}')
    assert result.exit_code == 0, result.output
    stored = etcd.etcdctl("get", "--print-value-only", "/coreos.com/network/config").stdout
    assert stored.strip() == '{"Network":"10.244.0.0/16"}'


def test_invalid_config_is_rejected_before_anything_is_written(run, etcd, tmp_path):
    etcd.etcdctl("put", "/coreos.com/network/config", CONFIG.decode())
    bad = tmp_path / "bad.json"
    bad.write_text('{"Network":"10.0.0.0/16","SubnetLen":31}')
    line = one_line_error(run("config", "put", str(bad)), 3)
    assert line == (
        f"flannelish: error: invalid network config in {bad}: "
        "SubnetLen must be less than /31: SubnetLen=31"
    )
    stored = etcd.etcdctl("get", "--print-value-only", "/coreos.com/network/config").stdout
    assert stored.strip() == CONFIG.decode()


def test_config_put_of_a_missing_file_is_a_clear_error(run, tmp_path):
    line = one_line_error(run("config", "put", str(tmp_path / "nope.json")), 3)
    assert "cannot read" in line and "No such file" in line


def test_config_get_without_config_says_what_key_is_missing(run):
    line = one_line_error(run("config", "get"), 3)
    assert "no network config in etcd at /coreos.com/network/config" in line


def test_leases_table_and_json(run, etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(CONFIG)
    etcd.etcdctl("put", KEY, node_attrs(9).to_json())  # a reservation
    lease = SubnetManager(registry).acquire(node_attrs(1))
    table = run("leases")
    assert table.exit_code == 0, table.output
    for text in (str(lease.subnet), "198.18.0.1", "0a:00:00:00:00:01", "23h59m", "10.244.9.0/24"):
        assert text in table.stdout
    assert "never" in table.stdout and "yes" in table.stdout
    assert "2 subnet(s): 1 leased, 1 reserved" in table.stdout
    docs = json.loads(run("leases", "--json").stdout)
    by_subnet = {d["subnet"]: d for d in docs}
    assert by_subnet["10.244.9.0/24"]["reserved"] is True
    assert by_subnet["10.244.9.0/24"]["expires_in"] is None
    mine = by_subnet[str(lease.subnet)]
    assert mine["public_ip"] == "198.18.0.1" and mine["vtep_mac"] == "0a:00:00:00:00:01"
    assert 86390 <= mine["expires_in"] <= 86400 and mine["reserved"] is False
    assert mine["value"] == json.loads(node_attrs(1).to_json())


def test_reserve_writes_a_leaseless_key_the_node_then_takes(run, etcd, registries):
    etcd.etcdctl("put", "/coreos.com/network/config", CONFIG.decode())
    result = run("reserve", "10.244.9.0/24", "--public-ip", "198.18.0.9")
    assert result.exit_code == 0, result.output
    assert key_json(etcd, KEY) == {
        "value": '{"PublicIP":"198.18.0.9","PublicIPv6":null}',
        "lease": 0,
    }
    lease = SubnetManager(registries(etcd.client_url)).acquire(node_attrs(9))
    assert str(lease.subnet) == "10.244.9.0/24" and key_json(etcd, KEY)["lease"] == 0
    assert run("reserve", "10.244.9.0/24", "--public-ip", "198.18.0.9").exit_code == 0
    line = one_line_error(run("reserve", "10.244.9.0/24", "--public-ip", "198.18.0.8"), 3)
    assert "10.244.9.0/24 is already reserved for 198.18.0.9" in line


def test_reserve_refuses_a_subnet_leased_by_another_node(run, etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(CONFIG)
    lease = SubnetManager(registry).acquire(node_attrs(1))
    line = one_line_error(run("reserve", str(lease.subnet), "--public-ip", "198.18.0.2"), 3)
    assert f"{lease.subnet} is already leased by 198.18.0.1" in line


def test_reserve_turns_the_nodes_own_lease_into_a_reservation(run, etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(CONFIG)
    lease = SubnetManager(registry).acquire(node_attrs(1))
    assert run("reserve", str(lease.subnet), "--public-ip", "198.18.0.1").exit_code == 0
    key = f"/coreos.com/network/subnets/{lease.subnet.network_address}-24"
    assert key_json(etcd, key) == {"value": node_attrs(1).to_json(), "lease": 0}


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["10.244.9.1/24"], 2, "is not a subnet such as"),
        (["banana"], 2, "is not a subnet such as"),
        (["10.244.9.0/24&10.244.8.0/24"], 2, "is not a subnet such as"),
        (["fd44:0:0:9::/64"], 3, "has no IPv4 subnet, but the network has IPv4"),
        (["10.244.9.0/24&fd44:0:0:9::/64"], 3, "has an IPv6 subnet, but the network has no"),
        (["10.244.9.0/24", "--public-ip", "1.2.3"], 2, "'1.2.3' is not an IPv4 address"),
        (["10.244.9.0/25"], 3, "10.244.9.0/25 is not a subnet of the configured pool"),
        (["10.244.0.0/24"], 3, "expected a /24 between 10.244.1.0 and 10.244.255.0"),
        (["10.99.0.0/24"], 3, "is not a subnet of the configured pool"),
    ],
)
def test_reserve_bad_input_changes_nothing(run, etcd, args, code, text):
    etcd.etcdctl("put", "/coreos.com/network/config", CONFIG.decode())
    if "--public-ip" not in args:
        args = [*args, "--public-ip", "198.18.0.9"]
    result = run("reserve", *args)
    assert result.exit_code == code, result.output
    assert text in result.stderr
    keys = etcd.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets").stdout
    assert keys.strip() == ""


def test_unreserve_removes_only_reservations(run, etcd, registries):
    registry = registries(etcd.client_url)
    registry.put_config(CONFIG)
    etcd.etcdctl("put", KEY, node_attrs(9).to_json())
    lease = SubnetManager(registry).acquire(node_attrs(1))
    line = one_line_error(run("unreserve", str(lease.subnet)), 3)
    assert "is a live lease of 198.18.0.1, not a reservation" in line
    result = run("unreserve", "10.244.9.0-24")
    assert result.exit_code == 0, result.output
    assert "was for 198.18.0.9" in result.stdout
    assert key_json(etcd, KEY) == {}
    assert "no reservation for 10.244.9.0/24" in one_line_error(
        run("unreserve", "10.244.9.0/24"), 3
    )


DUAL = (
    b'{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd44::/48",'
    b'"Backend":{"Type":"vxlan"}}'
)
V6ONLY = (
    b'{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd44::/48","Backend":{"Type":"vxlan"}}'
)
SUBNETS = "/coreos.com/network/subnets/"


def v6_attrs(i: int, v4: bool = True) -> LeaseAttrs:
    return LeaseAttrs(
        IPv4Address(f"198.18.0.{i}" if v4 else "0.0.0.0"), "vxlan",
        {"VNI": 1, "VtepMAC": f"0a:00:00:00:00:{i:02x}"} if v4 else None,
        IPv6Address(f"fd18::{i:x}"), {"VNI": 1, "VtepMAC": f"0a:00:00:00:06:{i:02x}"},
    )  # fmt: skip


@pytest.mark.parametrize("form", ["10.244.9.0/24&fd44:0:0:9::/64", "10.244.9.0-24&fd44:0:0:9::-64"])
def test_reserve_a_dual_stack_subnet_in_flannel_s_key_format(run, etcd, registries, form):
    etcd.etcdctl("put", "/coreos.com/network/config", DUAL.decode())
    result = run("reserve", form, "--public-ip", "198.18.0.9", "--public-ipv6", "fd18::9")
    assert result.exit_code == 0, result.output
    assert "reserved 10.244.9.0/24&fd44:0:0:9::/64 for 198.18.0.9" in result.stdout
    key = SUBNETS + "10.244.9.0-24&fd44:0:0:9::-64"
    assert key_json(etcd, key) == {
        "value": '{"PublicIP":"198.18.0.9","PublicIPv6":"fd18::9"}', "lease": 0,
    }  # fmt: skip
    # The node with that PublicIP takes both halves and the key stays lease-less.
    lease = SubnetManager(registries(etcd.client_url)).acquire(v6_attrs(9))
    assert str(lease.key) == "10.244.9.0/24&fd44:0:0:9::/64" and key_json(etcd, key)["lease"] == 0
    # Another node's IP: refused; an overlapping half: refused.
    line = one_line_error(run("reserve", form, "--public-ip", "198.18.0.8"), 3)
    assert "is already reserved for 198.18.0.9" in line
    line = one_line_error(
        run("reserve", "10.244.8.0/24&fd44:0:0:9::/64", "--public-ip", "198.18.0.8"), 3
    )
    assert "overlaps 10.244.9.0/24&fd44:0:0:9::/64 of 198.18.0.9" in line
    # Unreserve finds the dual-stack key by its IPv4 half alone.
    result = run("unreserve", "10.244.9.0/24")
    assert result.exit_code == 0, result.output
    assert "10.244.9.0/24&fd44:0:0:9::/64 (was for 198.18.0.9)" in result.stdout
    assert key_json(etcd, key) == {}


def test_reserve_an_ipv6_only_subnet_for_a_public_ipv6(run, etcd, registries):
    etcd.etcdctl("put", "/coreos.com/network/config", V6ONLY.decode())
    result = run("reserve", "fd44:0:0:9::/64", "--public-ipv6", "fd18::9")
    assert result.exit_code == 0, result.output
    key = SUBNETS + "0.0.0.0-0&fd44:0:0:9::-64"  # Flannel's IPv6-only key
    assert key_json(etcd, key) == {
        "value": '{"PublicIP":"0.0.0.0","PublicIPv6":"fd18::9"}', "lease": 0,
    }  # fmt: skip
    # Two IPv6-only nodes: each finds its own lease by PublicIPv6 (upstream: both 0.0.0.0).
    mgr = SubnetManager(registries(etcd.client_url))
    other = mgr.acquire(v6_attrs(8, v4=False))
    mine = SubnetManager(registries(etcd.client_url)).acquire(v6_attrs(9, v4=False))
    assert str(mine.key) == "fd44:0:0:9::/64" and other.key != mine.key
    assert key_json(etcd, key)["lease"] == 0
    line = one_line_error(run("reserve", str(other.key.v6), "--public-ipv6", "fd18::9"), 3)
    assert f"{other.key} is already leased by fd18::8" in line
    # The Flannel key form names the same reservation; the node's own lease can be pinned.
    assert (
        "already reserved for fd18::9"
        in run("reserve", "0.0.0.0-0&fd44:0:0:9::-64", "--public-ipv6", "fd18::9").stdout
    )
    assert run("reserve", str(other.key.v6), "--public-ipv6", "fd18::8").exit_code == 0
    assert key_json(etcd, SUBNETS + other.key.etcd)["lease"] == 0
    result = run("unreserve", "fd44:0:0:9::/64")
    assert result.exit_code == 0 and "(was for fd18::9)" in result.stdout, result.output
    assert key_json(etcd, key) == {}


@pytest.mark.parametrize(
    ("config", "args", "code", "text"),
    [
        (DUAL, ["10.244.9.0/24", "--public-ip", "198.18.0.9"], 3, "has no IPv6 subnet"),
        (DUAL, ["10.244.9.0/24&fd44:0:0:9::/80", "--public-ip", "198.18.0.9"], 3,
         "fd44:0:0:9::/80 is not an IPv6 subnet of the configured pool"),
        (DUAL, ["10.244.9.0/24&fd45:0:0:9::/64", "--public-ip", "198.18.0.9"], 3,
         "expected a /64 between fd44:0:0:1:: and fd44:0:0:ffff:: in fd44::/48"),
        (DUAL, ["10.244.9.0/24&fd44:0:0:9::/64", "--public-ipv6", "fd18::9"], 2,
         "--public-ip is required"),
        (V6ONLY, ["fd44:0:0:9::/64", "--public-ip", "198.18.0.9"], 2,
         "--public-ipv6 is required"),
        (V6ONLY, ["10.244.9.0/24&fd44:0:0:9::/64", "--public-ipv6", "fd18::9"], 3,
         "has an IPv4 subnet, but the network is IPv6-only"),
        (V6ONLY, ["fd44:0:0:9::/64", "--public-ipv6", "198.18.0.9"], 2,
         "'198.18.0.9' is not an IPv6 address"),
    ],
)  # fmt: skip
def test_reserve_bad_ipv6_input_changes_nothing(run, etcd, config, args, code, text):
    etcd.etcdctl("put", "/coreos.com/network/config", config.decode())
    result = run("reserve", *args)
    assert result.exit_code == code, result.output
    assert text in result.stderr
    keys = etcd.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets").stdout
    assert keys.strip() == ""


def test_unreachable_etcd_is_exit_4_with_one_line_and_no_traceback():
    t0 = time.monotonic()
    proc = subprocess.run(
        [FLANNELISH, "leases", "--etcd-endpoints", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flannelish: error: etcd is unreachable at")
    assert time.monotonic() - t0 < 15


def test_bad_etcd_flag_is_exit_3_naming_the_flag(run):
    result = CliRunner().invoke(cli, ["leases", "--etcd-endpoints", "ftp://x"])
    assert "--etcd-endpoints: 'ftp://x' must start with http:// or https://" in one_line_error(
        result, 3
    )


def test_https_endpoint_on_a_plain_http_etcd_says_so(etcd):
    https = etcd.client_url.replace("http://", "https://")
    result = CliRunner().invoke(cli, ["leases", "--etcd-endpoints", https])
    line = one_line_error(result, 4)
    assert "TLS handshake failed" in line and "plain http://" in line


def test_config_put_rejects_a_bad_vxlan_section_and_warns_about_unknown_backends(run, etcd):
    result = run(
        "config",
        "put",
        "-",
        input='{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}',
    )
    assert "Backend.VNI must be an integer" in one_line_error(result, 3)
    assert etcd.etcdctl("get", "/coreos.com/network/config").stdout == ""
    result = run("config", "put", "-", input='{"Network":"10.244.0.0/16"}')  # Flannel's udp default
    assert result.exit_code == 0, result.output
    assert 'warning: flannelish has no "udp" backend' in result.stderr
