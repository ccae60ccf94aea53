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
