"""Allocation rules, exhaustion, concurrency, delegated IPAM.

docs/cni-compat.md §9 items 22-26, 29, 34.
"""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from flannelish.testing.proc import run


def _ip(res: dict) -> str:
    return res["ips"][0]["address"].split("/")[0]


def test_exhausted_range_names_the_range_and_status_reports_50(cni):
    conf = cni.standalone({"rangeStart": "10.244.9.240", "rangeEnd": "10.244.9.241"})
    a, b, c = cni.pod(), cni.pod(), cni.pod()
    got = {_ip(cni.add(a, cid="a", conf=conf)), _ip(cni.add(b, cid="b", conf=conf))}
    assert got == {"10.244.9.240", "10.244.9.241"}
    doc = cni.call("ADD", conf, cid="c", netns=c).error()
    assert doc["msg"] == (
        "failed to allocate for range 0: no IP addresses available in range set: "
        "10.244.9.240-10.244.9.241"
    )
    assert cni.links(c) == ["lo"]
    status = dict(conf, cniVersion="1.1.0")
    doc = cni.call("STATUS", status, cid=None, ifname=None).error(50)
    assert "10.244.9.240-10.244.9.241" in doc["msg"]
    cni.delete(a, cid="a", conf=conf)
    cni.call("STATUS", status, cid=None, ifname=None).ok()


def test_round_robin_does_not_reuse_a_just_released_address(cni):
    conf = cni.standalone({"rangeStart": "10.244.9.10", "rangeEnd": "10.244.9.13"})
    a, b, c = cni.pod(), cni.pod(), cni.pod()
    first = _ip(cni.add(a, cid="a", conf=conf))
    cni.delete(a, cid="a", conf=conf)
    second = _ip(cni.add(b, cid="b", conf=conf))
    third = _ip(cni.add(c, cid="c", conf=conf))
    assert (first, second, third) == ("10.244.9.10", "10.244.9.11", "10.244.9.12")


def test_gateway_is_never_allocated_and_bounds_are_inclusive(cni_latest):
    cni = cni_latest
    conf = cni.standalone({"subnet": "10.244.9.0/29", "gateway": "10.244.9.3"})
    got = [_ip(cni.add(cni.pod(), cid=f"c{i}", conf=conf)) for i in range(5)]
    # .0 network, .3 gateway, .7 broadcast are skipped; .1 and .6 (the bounds) are used
    assert sorted(got) == ["10.244.9.1", "10.244.9.2", "10.244.9.4", "10.244.9.5", "10.244.9.6"]
    cni.call("ADD", conf, cid="c9", netns=cni.pod()).error()


def test_requested_ip_via_cni_args_args_and_runtime_config(cni):
    base = cni.standalone()
    pod = cni.pod()
    res = cni.add(pod, cid="a", conf=base, env={"CNI_ARGS": "IP=10.244.9.50"})
    assert _ip(res) == "10.244.9.50"
    conf = dict(base, args={"cni": {"ips": ["10.244.9.51"]}})
    assert _ip(cni.add(cni.pod(), cid="b", conf=conf)) == "10.244.9.51"
    conf = dict(base, runtimeConfig={"ips": ["10.244.9.52/24"]})
    assert _ip(cni.add(cni.pod(), cid="c", conf=conf)) == "10.244.9.52"
    taken = cni.call("ADD", base, cid="d", netns=cni.pod(), env={"CNI_ARGS": "IP=10.244.9.50"})
    assert "10.244.9.50 is not available" in taken.error()["msg"]
    gw = cni.call("ADD", base, cid="e", netns=cni.pod(), env={"CNI_ARGS": "IP=10.244.9.1"})
    assert "failed to allocate all requested IPs: 10.244.9.1" in gw.error()["msg"]
    outside = cni.call("ADD", base, cid="f", netns=cni.pod(), env={"CNI_ARGS": "IP=10.1.1.1"})
    assert "10.1.1.1" in outside.error()["msg"]
    assert sorted(cni.reserved_ips()) == ["10.244.9.50", "10.244.9.51", "10.244.9.52"]


@pytest.mark.slow
def test_100_concurrent_adds_get_distinct_ips_and_100_dels_leave_nothing(cni_latest):
    cni = cni_latest
    pods = [cni.pod(f"c{i}") for i in range(100)]

    def add(i: int):
        return cni.call("ADD", cni.conf(), cid=f"ctr{i}", netns=pods[i], timeout=300)

    with ThreadPoolExecutor(max_workers=100) as pool:
        replies = list(pool.map(add, range(100)))
    failures = [r.stdout for r in replies if r.rc != 0]
    assert failures == []
    ips = [_ip(r.json) for r in replies]
    assert len(set(ips)) == 100
    assert len(cni.reserved_ips()) == 100
    assert len([link for link in cni.links(cni.host) if link.startswith("veth")]) == 100

    def delete(i: int):
        return cni.call("DEL", cni.conf(), cid=f"ctr{i}", netns=pods[i], timeout=300)

    with ThreadPoolExecutor(max_workers=100) as pool:
        replies = list(pool.map(delete, range(100)))
    assert [r.stdout for r in replies if r.rc != 0 or r.stdout] == []
    assert cni.store_files() == ["last_reserved_ip.0", "lock"]
    assert [link for link in cni.links(cni.host) if link.startswith("veth")] == []


FAKE_IPAM = """#!/bin/sh
# Records what it was given, says something on stderr, then lets host-local do the work.
cat > "{dir}/stdin.$CNI_COMMAND"
env > "{dir}/env.$CNI_COMMAND"
echo "fake-ipam: $CNI_COMMAND for $CNI_CONTAINERID" >&2
exec /usr/lib/cni/host-local < "{dir}/stdin.$CNI_COMMAND"
"""


def test_other_ipam_types_are_delegated_with_full_config_env_and_stderr(cni_latest, tmp_path):
    cni = cni_latest
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    script = plugins / "fake-ipam"
    script.write_text(FAKE_IPAM.format(dir=tmp_path))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    conf = cni.conf(
        cniVersion="1.0.0",
        bridge="br7",
        marker="kept",
        ipam={"type": "fake-ipam", "subnet": "10.244.8.0/24", "dataDir": str(cni.data_dir)},
    )
    path = f"{plugins}:/usr/lib/cni"
    pod = cni.pod()
    reply = cni.call("ADD", conf, netns=pod, path=path, env={"CNI_ARGS": "IgnoreUnknown=1"})
    res = reply.ok().json
    assert res["ips"][0]["address"].startswith("10.244.8.") and res["ips"][0]["interface"] == 2
    assert "fake-ipam: ADD for ctr1" in reply.stderr
    given = json.loads((tmp_path / "stdin.ADD").read_text())
    assert given["marker"] == "kept" and given["bridge"] == "br7" and given["name"] == cni.name
    env = (tmp_path / "env.ADD").read_text()
    assert f"CNI_NETNS=/run/netns/{pod}" in env and "CNI_ARGS=IgnoreUnknown=1" in env
    reply = cni.call("DEL", conf, netns=pod, path=path).ok()
    assert "fake-ipam: DEL for ctr1" in reply.stderr
    assert not [f for f in os.listdir(cni.data_dir / cni.name) if f[0].isdigit()]


def test_delegate_failure_is_reported_with_its_message_and_rolls_back(cni_latest):
    cni = cni_latest
    conf = cni.conf(ipam={"type": "static", "addresses": [{"address": "bogus"}]})
    pod = cni.pod()
    doc = cni.call("ADD", conf, netns=pod).error()
    assert 'IPAM plugin "static"' in doc["msg"]
    assert cni.links(pod) == ["lo"]


def test_missing_delegate_plugin_is_code_7(cni_latest):
    conf = cni_latest.conf(ipam={"type": "no-such-ipam"})
    doc = cni_latest.call("ADD", conf, netns=cni_latest.pod()).error(7)
    assert "no-such-ipam" in doc["msg"]


def test_static_ipam_delegate_works(cni_latest):
    cni = cni_latest
    conf = cni.conf(
        cniVersion="1.0.0",
        ipam={
            "type": "static",
            "addresses": [{"address": "10.244.6.7/24", "gateway": "10.244.6.1"}],
        },
    )
    pod = cni.pod()
    res = cni.add(pod, conf=conf)
    assert res["ips"][0]["address"] == "10.244.6.7/24"
    assert cni.addrs(pod, "eth0") == ["10.244.6.7/24"]
    cni.delete(pod, conf=conf)
    assert run(["ip", "-n", pod, "link"]).stdout.count("eth0") == 0
