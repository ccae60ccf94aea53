"""docs/cni-compat.md §9 items 1-6, 9, 27: VERSION, version negotiation, env and input validation.

Each error case checks the exact CNI code, that stdout is one JSON error
object, and that nothing was created (no bridge in the host, no IPAM store).
"""

from __future__ import annotations

import json

import pytest

SUPPORTED = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}


def _nothing_created(cni) -> None:
    assert "cni0" not in cni.links(cni.host)
    assert cni.store_files() == []


def test_version_answers_with_supported_versions_without_stdin(cni):
    reply = cni.call("VERSION", None, cid=None, ifname=None, path=None).ok()
    doc = reply.json
    assert set(doc["supportedVersions"]) >= {"0.4.0", "1.0.0", "1.1.0"}
    assert set(doc["supportedVersions"]) == SUPPORTED
    assert doc["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("bad", ["9.9.9", "abc", "0.2.0", 1.0, None])
def test_unsupported_or_unparseable_version_is_code_1_naming_both_sides(cni_latest, bad):
    pod = cni_latest.pod()
    conf = cni_latest.conf(cniVersion=bad)
    if bad is None:
        del conf["cniVersion"]
    doc = cni_latest.call("ADD", conf, netns=pod).error(1)
    shown = json.dumps(bad if bad is not None else "0.1.0")
    assert shown in doc["details"] and '"1.1.0"' in doc["details"]
    _nothing_created(cni_latest)


@pytest.mark.parametrize("stdin", ['{"cniVersion": ', "[]", "not json", ""])
def test_malformed_stdin_is_code_6_and_creates_nothing(cni_latest, stdin):
    pod = cni_latest.pod()
    cni_latest.call("ADD", stdin, netns=pod).error(6)
    _nothing_created(cni_latest)
    assert cni_latest.links(pod) == ["lo"]


def test_missing_env_variables_are_all_named_with_code_4(cni):
    doc = cni.call("ADD", cni.conf(), cid=None, netns=None, ifname=None).error(4)
    assert doc["msg"] == "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
    doc = cni.call("ADD", cni.conf(), netns=cni.pod(), path=None).error(4)
    assert "CNI_PATH" in doc["msg"]
    _nothing_created(cni)


def test_unknown_command_is_code_4(cni):
    doc = cni.call("FOO", cni.conf(), netns=cni.pod()).error(4)
    assert doc["msg"] == "unknown CNI_COMMAND: FOO"


def test_missing_command_is_code_4(cni):
    env = {"CNI_COMMAND": ""}
    cni.call("", cni.conf(), netns=cni.pod(), env=env).error(4)


@pytest.mark.parametrize("cid", ["-bad id", "a b", "x/y", ".hidden"])
def test_bad_container_id_is_code_4(cni_latest, cid):
    doc = cni_latest.call("ADD", cni_latest.conf(), cid=cid, netns=cni_latest.pod()).error(4)
    assert doc["msg"] == "invalid characters in containerID" and doc["details"] == cid
    _nothing_created(cni_latest)


@pytest.mark.parametrize("ifname", ["a" * 22, "eth/0", "eth:0", "eth 0", ".", ".."])
def test_bad_ifname_is_code_4(cni_latest, ifname):
    cni_latest.call("ADD", cni_latest.conf(), ifname=ifname, netns=cni_latest.pod()).error(4)
    _nothing_created(cni_latest)


@pytest.mark.parametrize("name", [None, "", "bad name", 7])
def test_missing_or_invalid_network_name_is_code_7(cni_latest, name):
    conf = cni_latest.conf(name=name)
    if name is None:
        del conf["name"]
    doc = cni_latest.call("ADD", conf, netns=cni_latest.pod()).error(7)
    assert "network name" in doc["msg"]
    _nothing_created(cni_latest)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"mtu": "1450"}, '"mtu"'),
        ({"mtu": 20}, '"mtu"'),
        ({"isGateway": "yes"}, '"isGateway"'),
        ({"bridge": "a-very-long-bridge-name"}, '"bridge"'),
        ({"hairpinMode": True, "promiscMode": True}, "hairpin"),
        ({"ipam": {"subnet": "10.244.9.1/24"}}, "host bits"),
        ({"ipam": {"subnet": "10.244.9.0/31"}}, "too small"),
        ({"ipam": {"subnet": "10.244.9.0/32"}}, "too small"),
        ({"ipam": {"subnet": "10.244.9.0/24", "rangeStart": "10.244.8.5"}}, "rangeStart"),
        (
            {"ipam": {"ranges": [[{"subnet": "10.244.9.0/24"}], [{"subnet": "10.244.9.0/25"}]]}},
            "overlaps",
        ),
        ({"ipam": {"subnet": "10.244.9.0/24", "routes": [{"dst": "nope"}]}}, "ipam.routes[0].dst"),
        ({"runtimeConfig": {"mac": "zz:zz"}}, "runtimeConfig.mac"),
        ({"runtimeConfig": {"ips": ["10.244.9.300"]}}, "runtimeConfig.ips[0]"),
        ({"dns": []}, '"dns"'),
        ({"ipam": "host-local"}, '"ipam"'),
    ],
)
def test_invalid_config_fields_are_code_7_naming_the_field(cni_latest, overrides, needle):
    doc = cni_latest.call("ADD", cni_latest.conf(**overrides), netns=cni_latest.pod()).error(7)
    assert needle in doc["msg"] + doc.get("details", "")
    _nothing_created(cni_latest)


def test_unsupported_field_is_code_2(cni):
    doc = cni.call("ADD", cni.conf(vlan=100), netns=cni.pod()).error(2)
    assert '"vlan"' in doc["msg"] and "100" in doc["msg"]


def test_unknown_cni_args_are_rejected_unless_ignore_unknown(cni):
    pod = cni.pod()
    doc = cni.call("ADD", cni.conf(), netns=pod, env={"CNI_ARGS": "FOO=bar"}).error(4)
    assert "FOO=bar" in doc["msg"]
    _nothing_created(cni)
    env = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=x;FOO=bar"}
    result = cni.add(pod, env=env)
    assert result["cniVersion"] == cni.version


def test_error_object_carries_the_request_version(cni):
    doc = cni.call("FOO", cni.conf(), netns=cni.pod()).error(4)
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}
    doc = cni.call("ADD", cni.conf(name=""), netns=cni.pod()).error(7)
    assert doc["cniVersion"] == cni.version


def test_one_case_of_every_validation_error_in_every_version_and_mode(cni):
    """The tables above run in both modes at 1.1.0; this runs one case of each here."""
    pod = cni.pod()
    cni.call("ADD", cni.conf(cniVersion="9.9.9"), netns=pod).error(1)
    cni.call("ADD", '{"cniVersion": ', netns=pod).error(6)
    cni.call("ADD", cni.conf(), netns=pod, cid="-bad id").error(4)
    cni.call("ADD", cni.conf(), netns=pod, ifname="x" * 16).error(4)
    cni.call("ADD", cni.conf(name=""), netns=pod).error(7)
    cni.call("ADD", cni.conf(mtu="big"), netns=pod).error(7)
    _nothing_created(cni)
    assert cni.links(pod) == ["lo"]
