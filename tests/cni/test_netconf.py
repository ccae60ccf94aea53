"""Netconf validation and subnet.env derivation (no kernel, no root)."""

from __future__ import annotations

import ipaddress

import pytest
from flannelish.cni.netconf import load, read_subnet_env
from flannelish.cni.protocol import CniError, Invocation, parse_cni_args

from flannelish.errors import CniCode

pytestmark = pytest.mark.unit


@pytest.fixture
def subnet_env(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.34.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    return str(path)


def _doc(subnet_file: str, **extra) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "n",
        "type": "flannelish-cni",
        "subnetFile": subnet_file,
        **extra,
    }


def test_node_mode_derives_range_gateway_mtu_masq_and_routes_from_subnet_env(subnet_env):
    conf = load(_doc(subnet_env), "ADD")
    assert conf.node_mode and conf.mtu == 1450
    assert conf.ip_masq is False  # the daemon masquerades (FLANNEL_IPMASQ=true)
    (rng,) = conf.ipam.range_sets[0]
    assert rng.subnet == ipaddress.ip_network("10.244.34.0/24")
    assert str(rng.gateway) == "10.244.34.1"
    assert conf.ipam.routes == [
        {"dst": "10.244.0.0/16", "gw": "10.244.34.1"},
        {"dst": "0.0.0.0/0", "gw": "10.244.34.1"},
    ]
    assert conf.bridge == "cni0" and conf.is_gateway
    assert conf.store_dir == "/var/lib/cni/networks/n"


def test_explicit_netconf_values_win_over_subnet_env(subnet_env):
    conf = load(_doc(subnet_env, mtu=1400, ipMasq=True, ipam={"dataDir": "/x"}), "ADD")
    assert conf.mtu == 1400 and conf.ip_masq and conf.store_dir == "/x/n"


def test_missing_subnet_env_is_try_again_for_add_but_fine_for_del(tmp_path):
    doc = _doc(str(tmp_path / "absent.env"))
    with pytest.raises(CniError) as err:
        load(doc, "ADD")
    assert err.value.cni_code == CniCode.TRY_AGAIN_LATER
    assert "subnet.env" in err.value.msg and "absent.env" in err.value.msg
    conf = load(doc, "DEL")
    assert conf.subnet_env is None and conf.ipam.range_sets == []


def test_incomplete_subnet_env_names_the_missing_keys(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_NETWORK=10.244.0.0/16\n")
    with pytest.raises(CniError) as err:
        read_subnet_env(str(path))
    assert "FLANNEL_SUBNET" in err.value.msg and "FLANNEL_MTU" in err.value.msg


def test_standalone_ranges_and_subnet_shorthand(tmp_path):
    doc = _doc(
        str(tmp_path / "none"),
        ipam={
            "subnet": "10.5.0.0/24",
            "rangeStart": "10.5.0.10",
            "rangeEnd": "10.5.0.20",
            "ranges": [[{"subnet": "fd00::/64"}]],
        },
    )
    conf = load(doc, "ADD")
    assert not conf.node_mode and conf.mtu == 1500 and not conf.ip_masq
    assert [str(r) for rs in conf.ipam.range_sets for r in rs] == [
        "10.5.0.10-10.5.0.20",
        "fd00::1-fd00::ffff:ffff:ffff:ffff",
    ]


@pytest.mark.parametrize(
    ("ipam", "needle"),
    [
        ({"subnet": "10.5.0.1/24"}, "host bits"),
        ({"subnet": "10.5.0.0/31"}, "too small"),
        ({"subnet": "10.5.0.0/24", "rangeEnd": "10.6.0.1"}, "rangeEnd"),
        ({"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.9", "rangeEnd": "10.5.0.8"}, "after"),
        ({"ranges": [[]]}, "ranges[0]"),
        ({"ranges": "x"}, "ranges"),
        ({"subnet": "10.5.0.0/24", "gateway": "fd00::1"}, "gateway"),
        ({"type": "../evil"}, "ipam.type"),
    ],
)
def test_bad_ipam_sections_name_the_field(tmp_path, ipam, needle):
    with pytest.raises(CniError) as err:
        load(_doc(str(tmp_path / "none"), ipam=ipam), "ADD")
    assert err.value.cni_code == CniCode.INVALID_CONFIG
    assert needle in str(err.value)


def test_requested_ips_and_mac_precedence(subnet_env):
    doc = _doc(
        subnet_env,
        args={"cni": {"ips": ["10.244.34.9"], "mac": "0a:00:00:00:00:02"}},
        runtimeConfig={"ips": ["10.244.34.8/24"], "mac": "0a:00:00:00:00:03"},
    )
    conf = load(doc, "ADD", {"IP": "10.244.34.7", "MAC": "0a:00:00:00:00:01"})
    assert [str(i) for i in conf.requested_ips] == ["10.244.34.7", "10.244.34.9", "10.244.34.8"]
    assert conf.mac == "0a:00:00:00:00:03"


def test_multicast_mac_is_rejected(subnet_env):
    with pytest.raises(CniError, match="multicast"):
        load(_doc(subnet_env, runtimeConfig={"mac": "01:00:5e:00:00:01"}), "ADD")


def test_cni_args_parsing():
    assert parse_cni_args("IP=1.2.3.4;MAC=x") == {"IP": "1.2.3.4", "MAC": "x"}
    with pytest.raises(CniError, match="unknown args"):
        parse_cni_args("K8S_POD_NAME=a")
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a")["K8S_POD_NAME"] == "a"
    with pytest.raises(CniError, match="invalid pair"):
        parse_cni_args("novalue")


def test_invocation_lists_all_missing_variables_in_order():
    with pytest.raises(CniError) as err:
        Invocation.from_env({"CNI_COMMAND": "CHECK"})
    assert err.value.msg == (
        "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
    )
    inv = Invocation.from_env(
        {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a", "CNI_IFNAME": "e", "CNI_PATH": "/a:/b"}
    )
    assert inv.netns == "" and inv.path == ["/a", "/b"]


def test_gc_reads_valid_attachments(subnet_env):
    doc = _doc(
        subnet_env,
        cniVersion="1.1.0",
        **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]},
    )
    assert load(doc, "GC").valid_attachments == [("a", "eth0")]
    doc["cni.dev/valid-attachments"] = [{"ifname": "eth0"}]
    with pytest.raises(CniError, match="valid-attachments"):
        load(doc, "GC")


# --- whole-string matching of outside identifiers --------------------


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t"])
def test_container_id_with_trailing_whitespace_is_code_4(suffix):
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c3" + suffix, "CNI_IFNAME": "eth0"}
    env["CNI_PATH"] = "/x"
    with pytest.raises(CniError) as err:
        Invocation.from_env(env)
    assert err.value.cni_code == CniCode.INVALID_ENV
    assert err.value.msg == "invalid characters in containerID"
    env["CNI_CONTAINERID"] = "c3"
    assert Invocation.from_env(env).container_id == "c3"


def test_network_name_with_trailing_newline_is_code_7(subnet_env):
    with pytest.raises(CniError) as err:
        load(_doc(subnet_env, name="net\n"), "DEL")
    assert err.value.cni_code == CniCode.INVALID_CONFIG
    assert "invalid network name" in err.value.msg


@pytest.mark.parametrize("where", ["CNI_ARGS", "args", "runtimeConfig"])
def test_mac_with_trailing_newline_is_code_7(subnet_env, where):
    mac = "0a:00:00:00:00:01\n"
    doc = _doc(subnet_env)
    cni_args = {}
    if where == "CNI_ARGS":
        cni_args = {"MAC": mac}
    elif where == "args":
        doc["args"] = {"cni": {"mac": mac}}
    else:
        doc["runtimeConfig"] = {"mac": mac}
    with pytest.raises(CniError) as err:
        load(doc, "ADD", cni_args)
    assert err.value.cni_code == CniCode.INVALID_CONFIG and "not a MAC address" in err.value.msg


def test_version_strings_are_matched_whole():
    from flannelish.cni.protocol import version_tuple

    assert version_tuple("1.1.0") == (1, 1, 0)
    for bad in (
        "1.1.0\n",
        "1.1.0x",
        "\u0661.1.0",
    ):  # the last one starts with an Arabic-Indic digit
        with pytest.raises(ValueError):
            version_tuple(bad)


@pytest.mark.parametrize(
    "entry",
    [{"containerID": "c3\n", "ifname": "eth0"}, {"containerID": "c3", "ifname": "eth0\n"}],
)
def test_gc_refuses_attachments_that_add_could_not_have_made(subnet_env, entry):
    doc = _doc(subnet_env, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [entry]})
    with pytest.raises(CniError) as err:
        load(doc, "GC")
    assert err.value.cni_code == CniCode.INVALID_CONFIG and "valid-attachments[0]" in err.value.msg


# --- prevResult and integer fields are validated, never code 999 ----

GOOD_PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:f4:07:01"},
        {"name": "eth0", "mac": "0a:58:0a:f4:07:02", "sandbox": "/run/netns/x", "mtu": 1450},
    ],
    "ips": [{"interface": 1, "address": "10.244.34.2/24", "gateway": "10.244.34.1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.34.1", "table": 2**32 - 1, "scope": 0}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"]},
    "custom": {"kept": True},
}


def test_a_well_formed_prev_result_is_kept_as_given(subnet_env):
    conf = load(_doc(subnet_env, prevResult=GOOD_PREV), "CHECK")
    assert conf.prev_result == GOOD_PREV


def _with(path: str, value: object) -> dict:
    """GOOD_PREV with the field at `path` (dotted, list indexes as digits) replaced."""
    import copy

    doc = copy.deepcopy(GOOD_PREV)
    *parents, last = path.split(".")
    node: object = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value  # type: ignore[index]
    return doc


@pytest.mark.parametrize(
    ("prev", "needle"),
    [
        ([1], "prevResult"),
        (_with("interfaces", {"name": "x"}), "prevResult.interfaces"),
        (_with("interfaces.0", "cni0"), "prevResult.interfaces[0]"),
        (_with("interfaces.1.name", ""), 'missing "name"'),
        (_with("interfaces.1.mac", 5), "prevResult.interfaces[1].mac"),
        (_with("interfaces.1.mac", "0a:58:0a:f4:07:02\n"), "not a MAC"),
        (_with("interfaces.1.mtu", 2**40), "prevResult.interfaces[1].mtu"),
        (_with("interfaces.1.mtu", -1), "outside"),
        (_with("interfaces.1.sandbox", ["x"]), "sandbox"),
        (_with("ips.0", {"interface": 1}), "address"),
        (_with("ips.0.address", "zz"), "not a CIDR"),
        (_with("ips.0.address", "10.244.34.2"), "not a CIDR"),
        (_with("ips.0.address", "10.244.34.2/33"), "not a CIDR"),
        (_with("ips.0.address", 7), "not a CIDR"),
        (_with("ips.0.gateway", "fd00::1"), "gateway"),
        (_with("ips.0.gateway", "nope"), "gateway"),
        (_with("ips.0.interface", 2), "is not an index"),
        (_with("ips.0.interface", "1"), "expected a integer"),
        (_with("ips.0.interface", True), "expected a integer"),
        (_with("ips.0.version", "6"), "does not match"),
        (_with("routes.0.dst", "x"), "routes[0].dst"),
        (_with("routes.0.gw", "fd00::1"), "routes[0].gw"),
        (_with("routes.0.table", 2**40), "outside 0..4294967295"),
        (_with("routes.0.table", -1), "outside"),
        (_with("routes.0.scope", 256), "outside 0..255"),
        (_with("routes.0.priority", 1.5), "priority"),
        (_with("routes", {"dst": "0.0.0.0/0"}), "routes"),
        (_with("dns", []), "dns"),
        (_with("dns.nameservers", [1]), "nameservers[0]"),
        (_with("dns.domain", 1), "domain"),
    ],
)
def test_malformed_prev_result_is_code_7_naming_the_field(subnet_env, prev, needle):
    for command in ("ADD", "CHECK"):
        with pytest.raises(CniError) as err:
            load(_doc(subnet_env, prevResult=prev), command)
        assert err.value.cni_code == CniCode.INVALID_CONFIG, err.value
        assert needle in err.value.msg


def test_del_ignores_a_malformed_prev_result(subnet_env):
    """DEL does not read prevResult; failing over it would leak the attachment."""
    conf = load(_doc(subnet_env, prevResult=_with("ips.0.address", "zz")), "DEL")
    assert conf.prev_result is None


@pytest.mark.parametrize(
    ("route", "needle"),
    [
        ({"dst": "10.0.0.0/8", "table": 2**40}, "outside 0..4294967295"),
        ({"dst": "10.0.0.0/8", "table": -5}, "outside"),
        ({"dst": "10.0.0.0/8", "priority": 2**32}, "priority"),
        ({"dst": "10.0.0.0/8", "scope": 300}, "outside 0..255"),
        ({"dst": "10.0.0.0/8", "mtu": 2**33}, "mtu"),
        ({"dst": "10.0.0.0/8", "advmss": -1}, "advmss"),
        ({"dst": "10.0.0.0/8", "gw": "fd00::1"}, "not an IPv4 address"),
        ({"dst": "10.0.0.0/8", "gw": "10.0.0.1/99"}, "not an IP address"),
        ({"dst": "10.0.0.0/40"}, "not a CIDR"),
    ],
)
def test_route_fields_are_bounded_by_their_kernel_width(subnet_env, route, needle):
    with pytest.raises(CniError) as err:
        load(_doc(subnet_env, ipam={"routes": [route]}), "ADD")
    assert err.value.cni_code == CniCode.INVALID_CONFIG
    assert needle in err.value.msg


def test_route_fields_at_their_bounds_are_accepted(subnet_env):
    route = {"dst": "10.0.0.0/8", "table": 2**32 - 1, "priority": 0, "scope": 255, "mtu": 0}
    conf = load(_doc(subnet_env, ipam={"routes": [route]}), "ADD")
    assert conf.ipam.routes[0] == route


@pytest.mark.parametrize("mtu", ["-1", "99999999999", "67"])
def test_out_of_range_flannel_mtu_is_try_again_not_a_crash(tmp_path, mtu):
    path = tmp_path / "subnet.env"
    path.write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.34.1/24\n"
        f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
    )
    with pytest.raises(CniError) as err:
        load(_doc(str(path)), "ADD")
    assert err.value.cni_code == CniCode.TRY_AGAIN_LATER and "FLANNEL_MTU" in err.value.msg


def test_requested_ip_with_a_bad_prefix_is_rejected(subnet_env):
    with pytest.raises(CniError, match="not an IP address"):
        load(_doc(subnet_env, runtimeConfig={"ips": ["10.244.34.9/zz"]}), "ADD")
    conf = load(_doc(subnet_env, runtimeConfig={"ips": ["10.244.34.9/24"]}), "ADD")
    assert [str(ip) for ip in conf.requested_ips] == ["10.244.34.9"]


def test_deeply_nested_values_are_reported_without_recursing(subnet_env):
    deep: object = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(CniError) as err:
        load(_doc(subnet_env, dns=deep), "ADD")
    assert err.value.cni_code == CniCode.INVALID_CONFIG


@pytest.mark.parametrize(
    ("key", "where"),
    [("subnetFile", ""), ("daemonSocket", ""), ("dataDir", "ipam."), ("resolvConf", "ipam.")],
)
def test_paths_with_a_nul_character_are_code_7(subnet_env, key, where):
    doc = _doc(subnet_env)
    if where:
        doc["ipam"] = {key: "/tmp/a\0b"}
    else:
        doc[key] = "/tmp/a\0b"
    for command in ("ADD", "DEL"):
        with pytest.raises(CniError) as err:
            load(doc, command)
        assert err.value.cni_code == CniCode.INVALID_CONFIG and f'"{where}{key}"' in err.value.msg


def test_resolv_conf_is_read_bounded_and_tolerates_bad_bytes(tmp_path):
    from flannelish.cni.bridge import _parse_resolv_conf

    with pytest.raises(CniError) as err:
        _parse_resolv_conf("/dev/zero")
    assert err.value.cni_code == CniCode.INVALID_CONFIG and "larger than" in err.value.msg
    path = tmp_path / "resolv.conf"
    path.write_bytes(b"nameserver 10.96.0.10\nsearch a\xff.svc b\noptions ndots:5\n")
    dns = _parse_resolv_conf(str(path))
    assert dns["nameservers"] == ["10.96.0.10"] and dns["options"] == ["ndots:5"]
    assert dns["search"][1] == "b"
