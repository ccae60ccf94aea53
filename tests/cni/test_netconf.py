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


# --- issue 12, item 7: whole-string matching of outside identifiers --------------------


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
