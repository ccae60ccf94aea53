"""Hypothesis fuzzing of netconf and env: always one JSON error object, never a traceback.

Safety: these run in the root namespace, so the generated calls can never
reach the kernel or shared state.  Only ADD/CHECK/STATUS/VERSION and junk
commands are generated (never DEL/GC), CNI_NETNS always points below a
directory that does not exist (ADD/CHECK fail at "open netns" before any
change), CNI_PATH is an empty temp dir (no delegate can run), and
subnetFile/daemonSocket/dataDir are forced into a temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flannelish.cni import main as cni_main
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

PLUGIN = str(Path(sys.executable).parent / "flannelish-cni")
NO_NETNS = "/nonexistent-flannelish-fuzz/"

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(
        [
            "10.244.0.0/24",
            "10.244.0.1",
            "fd00::/64",
            "1.0.0",
            "0.4.0",
            "1.1.0",
            "host-local",
            "static",
            "cni0",
            "0a:58:0a:f4:00:01",
            "eth0",
            "",
        ]
    ),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = [
    "cniVersion",
    "name",
    "type",
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "ipMasq",
    "hairpinMode",
    "promiscMode",
    "forceAddress",
    "mtu",
    "dns",
    "ipam",
    "runtimeConfig",
    "args",
    "prevResult",
    "vlan",
    "cni.dev/valid-attachments",
]
ipam_value = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["host-local", "static", "nope", "../x"]),
        "subnet": st.one_of(json_leaf, st.sampled_from(["10.244.3.0/24", "10.244.3.7/24"])),
        "rangeStart": json_leaf,
        "rangeEnd": json_leaf,
        "gateway": json_leaf,
        "ranges": json_value,
        "routes": json_value,
        "resolvConf": json_leaf,
    },
)


_TYPED = {
    "bridge": st.sampled_from(["cni0", "br-x", "a" * 16, ""]),
    "mtu": st.integers(0, 70000),
    "dns": st.fixed_dictionaries({}, optional={"nameservers": json_value, "search": json_value}),
    "runtimeConfig": st.fixed_dictionaries({}, optional={"ips": json_value, "mac": json_leaf}),
    "args": st.fixed_dictionaries(
        {"cni": st.fixed_dictionaries({}, optional={"ips": json_value, "mac": json_leaf})}
    ),
    "prevResult": st.fixed_dictionaries({}, optional={"interfaces": json_value, "ips": json_value}),
}


def _key_strategy(key: str) -> st.SearchStrategy:
    """Mostly well-typed values (to get past the type checks), sometimes anything."""
    if key == "ipam":
        return ipam_value
    if key in _TYPED:
        return st.one_of(_TYPED[key], json_value)
    if key in (
        "isGateway",
        "isDefaultGateway",
        "ipMasq",
        "hairpinMode",
        "promiscMode",
        "forceAddress",
    ):
        return st.one_of(st.booleans(), json_value)
    return json_value


HEADER = {"cniVersion": st.sampled_from(["0.4.0", "1.0.0", "1.1.0"]), "name": st.just("fz")}
netconf = st.fixed_dictionaries(HEADER, optional={k: _key_strategy(k) for k in KEYS[2:]})
any_netconf = st.fixed_dictionaries({}, optional={k: _key_strategy(k) for k in KEYS})
env_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40
)
commands = st.one_of(
    st.sampled_from(["ADD", "ADD", "ADD", "CHECK", "STATUS"]),
    st.sampled_from(["VERSION", "", "add", "FOO", "DEL "]),
)
# mostly-valid attachment variables, so the netconf checks behind them are reached too
cids = st.one_of(st.just("ctr"), env_text)
ifnames = st.one_of(st.just("eth0"), env_text)


def _safe(doc: dict, tmp: Path) -> dict:
    doc = dict(doc)
    doc["subnetFile"] = str(tmp / "subnet.env")
    doc["daemonSocket"] = str(tmp / "no.sock")
    if isinstance(doc.get("ipam"), dict):
        doc["ipam"] = dict(doc["ipam"], dataDir=str(tmp / "data"))
    return doc


def _env(command: str, cid: str, netns: str, ifname: str, args: str, tmp: Path) -> dict:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": NO_NETNS + netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": str(tmp / "emptypath"),
    }


def _assert_cni_output(rc: int, out: str, err: str, command: str) -> None:
    assert "Traceback" not in out + err
    if rc == 0:
        assert command in ("VERSION", "STATUS"), out
        if out:
            assert isinstance(json.loads(out), dict)
        return
    assert rc == 1
    doc = json.loads(out)
    assert isinstance(doc, dict)
    assert isinstance(doc["code"], int) and isinstance(doc["msg"], str) and doc["msg"]
    event(f"code {doc['code']}: {doc['msg'][:24]}")  # --hypothesis-show-statistics


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cnifuzz")
    (tmp / "emptypath").mkdir()
    (tmp / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    return tmp


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=netconf, command=st.sampled_from(["ADD", "ADD", "CHECK", "STATUS"]))
def test_fuzzed_netconf_always_gives_a_cni_error_object(fuzz_dir, capfd, doc, command):
    env = _env(command, "ctr", "x", "eth0", "IgnoreUnknown=1", fuzz_dir)
    rc = cni_main.run(env, json.dumps(_safe(doc, fuzz_dir)).encode())
    out, err = capfd.readouterr()
    _assert_cni_output(rc, out, err, command)
    assert not (fuzz_dir / "data").exists() or not [
        f for f in os.listdir(fuzz_dir / "data" / "fz") if f[0].isdigit()
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(command=commands, cid=env_text, netns=env_text, ifname=env_text, args=env_text)
def test_fuzzed_env_always_gives_a_cni_error_object(
    fuzz_dir, capfd, command, cid, netns, ifname, args
):
    doc = {"cniVersion": "1.0.0", "name": "fz", "type": "flannelish-cni"}
    env = _env(command, cid, netns, ifname, args, fuzz_dir)
    rc = cni_main.run(env, json.dumps(_safe(doc, fuzz_dir)).encode())
    out, err = capfd.readouterr()
    _assert_cni_output(rc, out, err, command)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        json_value.map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzzed_raw_stdin_gives_a_cni_error_object(fuzz_dir, capfd, raw):
    env = _env("ADD", "ctr", "x", "eth0", "", fuzz_dir)
    rc = cni_main.run(env, raw)
    out, err = capfd.readouterr()
    _assert_cni_output(rc, out, err, "ADD")


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=any_netconf, command=commands, cid=cids, ifname=ifnames)
def test_fuzzed_input_through_the_real_executable(fuzz_dir, doc, command, cid, ifname):
    env = _env(command, cid, "x", ifname, "", fuzz_dir)
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    proc = subprocess.run(
        [PLUGIN],
        input=json.dumps(_safe(doc, fuzz_dir)).encode(),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    _assert_cni_output(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), command)
