"""Issue 12, CNI items: hostile or malformed input from the runtime and the socket path.

Each test drives the real executable (both execution paths where the fixture
says so) and checks the CNI code *and* that nothing was created or leaked:
no veth, no IP reservation, no nft element.
"""

from __future__ import annotations

import pytest

from flannelish.testing.proc import run


def _nat(cni) -> str:
    return run(["ip", "netns", "exec", cni.host, "nft", "list", "ruleset"]).stdout


def _veths(cni) -> list[str]:
    return [link for link in cni.links(cni.host) if link.startswith("veth")]


# --- item 7: identifiers are matched as whole strings ---------------------------------


def test_add_with_a_trailing_newline_in_the_container_id_is_code_4_and_creates_nothing(cni):
    pod = cni.pod()
    doc = cni.call("ADD", cni.conf(), cid="c3\n", netns=pod).error(4)
    assert doc["msg"] == "invalid characters in containerID" and doc["details"] == "c3\n"
    assert cni.store_files() == [] and cni.links(pod) == ["lo"] and _veths(cni) == []


def test_del_with_a_trailing_newline_is_refused_before_touching_anything(cni):
    """Before the fix this DEL removed the link but leaked the reservation."""
    cni.write_subnet_env(ipmasq=False)  # the plugin masquerades: an nft element exists too
    pod = cni.pod()
    ip = cni.add(pod, cid="c3")["ips"][0]["address"].split("/")[0]
    cni.call("DEL", cni.conf(), cid="c3\n", netns=pod).error(4)
    assert "eth0" in cni.links(pod) and len(_veths(cni)) == 1
    assert cni.reserved_ips() == [ip] and ip in _nat(cni)
    cni.delete(pod, cid="c3")
    assert cni.reserved_ips() == [] and _veths(cni) == [] and ip not in _nat(cni)


@pytest.mark.parametrize("name", ["net\n", "net\r\n"])
def test_network_name_with_a_trailing_newline_is_code_7(cni_latest, name):
    cni = cni_latest
    pod = cni.pod()
    cni.call("ADD", cni.conf(name=name), netns=pod).error(7)
    assert cni.links(pod) == ["lo"] and not cni.data_dir.exists()


# --- item 10: malformed prevResult and out-of-range integers are code 7, never 999 ----


@pytest.mark.parametrize(
    "mangle",
    [
        lambda prev: prev.update(ips="10.244.7.2/24"),
        lambda prev: prev["ips"][0].update(address="10.244.7.2/99"),
        lambda prev: prev["ips"][0].update(interface=7),
        lambda prev: prev["interfaces"][2].update(mac=["x"]),
        lambda prev: prev["routes"][0].update(table=2**40),
        lambda prev: prev["routes"].append({"dst": "10.9.0.0/16", "gw": 5}),
    ],
    ids=["ips-not-a-list", "bad-prefix", "bad-index", "mac-not-a-string", "table", "gw"],
)
def test_check_with_a_malformed_prev_result_is_code_7(cni, mangle):
    pod = cni.pod()
    prev = cni.add(pod)
    assert cni.call("CHECK", cni.conf(prevResult=prev), netns=pod).ok().stdout == ""
    mangle(prev)
    doc = cni.call("CHECK", cni.conf(prevResult=prev), netns=pod).error(7)
    assert "prevResult" in doc["msg"]
    cni.delete(pod, conf=cni.conf(prevResult=prev))  # DEL does not trip over it
    assert cni.reserved_ips() == [] and _veths(cni) == []


@pytest.mark.parametrize(
    ("route", "needle"),
    [
        ({"dst": "10.96.0.0/12", "table": 2**40}, "outside 0..4294967295"),
        ({"dst": "10.96.0.0/12", "scope": -1}, "outside 0..255"),
        ({"dst": "10.96.0.0/12", "priority": 2**32}, "priority"),
    ],
)
def test_add_with_an_out_of_range_route_field_is_code_7_and_creates_nothing(
    cni_latest, route, needle
):
    cni = cni_latest
    pod = cni.pod()
    doc = cni.call(
        "ADD", cni.conf(ipam={"dataDir": str(cni.data_dir), "routes": [route]}), netns=pod
    )
    assert needle in doc.error(7)["msg"]
    assert cni.store_files() == [] and cni.links(pod) == ["lo"] and _veths(cni) == []


def test_a_route_table_at_the_u32_limit_reaches_the_kernel(cni_latest):
    cni = cni_latest
    pod = cni.pod()
    route = {"dst": "10.96.0.0/12", "table": 2**32 - 1}
    cni.add(pod, conf=cni.conf(ipam={"dataDir": str(cni.data_dir), "routes": [route]}))
    assert "10.96.0.0/12" in run(["ip", "-n", pod, "route", "show", "table", str(2**32 - 1)]).stdout
