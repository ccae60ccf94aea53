"""Hypothesis fuzzing of every CNI input: netconf, prevResult, env, raw and nested stdin.

The property: the plugin answers with one JSON error object (or a result),
and every failure is one of the project's own errors (CniError /
FlannelishError).  An exception of any other type -- which the entry point
would turn into code 999 "internal error: ValueError: ..." -- fails the test.

Safety: these run in the root namespace, so the generated calls can never
reach the kernel or shared state.  Only ADD/CHECK/STATUS/VERSION and junk
commands are dispatched (DEL and GC are fuzzed up to the end of validation
only), CNI_NETNS always points below a directory that does not exist
(ADD/CHECK fail at "open netns" before any change), CNI_PATH is an empty temp
dir (no delegate can run), and subnetFile/daemonSocket/dataDir are forced
into a temp dir.

Budget: the hypothesis profile from tests/conftest.py (small in `make test`,
large in `make fuzz`); tests that start a process take a fraction of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flannelish.cni import main as cni_main
from flannelish.cni.protocol import CniError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flannelish.errors import CniCode

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
# Environment values as main() sees them: any text without NUL, including the lone
# surrogates that surrogateescape makes of bytes that are not UTF-8, and newlines.
env_text = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
        max_size=40,
    ),
    st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=4).map(
        lambda bad: "ctr" + bad
    ),
    st.sampled_from(
        ["ctr\n", "eth0\n", "c3\r\n", "eth0 ", "IP=10.244.3.7\n", "MAC=0a:58:0a:f4:03:07\n"]
    ),
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


def _assert_cni_output(rc: int, out: str, err: str, command: str) -> int | None:
    """The CNI error code (None on success) after checking the output's shape."""
    assert "Traceback" not in out + err
    # handler.py / main.py say "internal error" only for exceptions that are not ours
    assert "internal error" not in out + err, out + err
    if rc == 0:
        assert command in ("VERSION", "STATUS"), out
        if out:
            assert isinstance(json.loads(out), dict)
        return None
    assert rc == 1
    doc = json.loads(out)
    assert isinstance(doc, dict)
    assert isinstance(doc["code"], int) and isinstance(doc["msg"], str) and doc["msg"]
    event(f"code {doc['code']}: {doc['msg'][:24]}")  # --hypothesis-show-statistics
    return doc["code"]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cnifuzz")
    (tmp / "emptypath").mkdir()
    (tmp / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    return tmp


@settings(suppress_health_check=list(HealthCheck))
@given(doc=netconf, command=st.sampled_from(["ADD", "ADD", "CHECK", "STATUS"]))
def test_fuzzed_netconf_always_gives_a_cni_error_object(fuzz_dir, capfd, doc, command):
    env = _env(command, "ctr", "x", "eth0", "IgnoreUnknown=1", fuzz_dir)
    rc = cni_main.run(env, json.dumps(_safe(doc, fuzz_dir)).encode())
    out, err = capfd.readouterr()
    _assert_cni_output(rc, out, err, command)
    assert not (fuzz_dir / "data").exists() or not [
        f for f in os.listdir(fuzz_dir / "data" / "fz") if f[0].isdigit()
    ]


@settings(suppress_health_check=list(HealthCheck))
@given(command=commands, cid=env_text, netns=env_text, ifname=env_text, args=env_text)
def test_fuzzed_env_always_gives_a_cni_error_object(
    fuzz_dir, capfd, command, cid, netns, ifname, args
):
    doc = {"cniVersion": "1.0.0", "name": "fz", "type": "flannelish-cni"}
    env = _env(command, cid, netns, ifname, args, fuzz_dir)
    rc = cni_main.run(env, json.dumps(_safe(doc, fuzz_dir)).encode())
    out, err = capfd.readouterr()
    _assert_cni_output(rc, out, err, command)


@settings(suppress_health_check=list(HealthCheck))
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


@settings(
    max_examples=max(10, settings.default.max_examples // 10),
    suppress_health_check=list(HealthCheck),
)
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


# --- prevResult -------------------------------------------------------

big_int = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 255, 256, 1450, 65535, 65536, 2**32 - 1, 2**32, -1]),
)
cidr_like = st.one_of(
    st.sampled_from(
        ["10.244.3.7/24", "10.244.3.7", "10.244.3.7/33", "fd00::7/64", "0.0.0.0/0", "x/24", ""]
    ),
    json_leaf,
)
ip_like = st.one_of(st.sampled_from(["10.244.3.1", "fd00::1", "10.244.3.1/24", "1.2.3"]), json_leaf)
int_field = st.one_of(big_int, json_leaf)
prev_iface = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["eth0", "cni0", "lo", ""]), json_leaf),
        "mac": st.one_of(
            st.sampled_from(
                ["0a:58:0a:f4:03:07", "00:00:00:00:00:00", "zz", "0a:58:0a:f4:03:07\n"]
            ),
            json_leaf,
        ),
        "mtu": int_field,
        "sandbox": st.one_of(st.just("/nonexistent-flannelish-fuzz/x"), json_leaf),
        "socketPath": json_leaf,
        "pciID": json_leaf,
        "extra": json_value,
    },
)
prev_ip = st.fixed_dictionaries(
    {},
    optional={
        "address": cidr_like,
        "gateway": ip_like,
        "interface": st.one_of(st.integers(-2, 5), int_field),
        "version": st.one_of(st.sampled_from(["4", "6", "5"]), json_leaf),
    },
)
prev_route = st.fixed_dictionaries(
    {},
    optional={
        "dst": cidr_like,
        "gw": ip_like,
        **{k: int_field for k in ("mtu", "advmss", "priority", "table", "scope")},
    },
)
prev_dns = st.fixed_dictionaries(
    {},
    optional={
        "nameservers": st.one_of(st.lists(json_leaf, max_size=3), json_value),
        "domain": json_leaf,
        "search": json_value,
        "options": json_value,
    },
)
prev_result = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "cniVersion": json_leaf,
            "interfaces": st.one_of(st.lists(prev_iface, max_size=4), json_value),
            "ips": st.one_of(st.lists(prev_ip, max_size=3), json_value),
            "routes": st.one_of(st.lists(prev_route, max_size=3), json_value),
            "dns": st.one_of(prev_dns, json_value),
        },
    ),
    json_value,
)


@settings(suppress_health_check=list(HealthCheck))
@given(prev=prev_result, command=st.sampled_from(["ADD", "CHECK"]))
def test_fuzzed_prev_result_through_the_entry_point(fuzz_dir, capfd, prev, command):
    doc = {"cniVersion": "1.1.0", "name": "fz", "type": "flannelish-cni", "prevResult": prev}
    env = _env(command, "ctr", "x", "eth0", "", fuzz_dir)
    rc = cni_main.run(env, json.dumps(_safe(doc, fuzz_dir)).encode())
    out, err = capfd.readouterr()
    _assert_cni_output(rc, out, err, command)


OUR_RESULT = {
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:f4:03:01", "mtu": 1450},
        {"name": "veth0a0b0c0d", "mac": "0a:58:0a:f4:03:02", "mtu": 1450},
        {"name": "eth0", "mac": "0a:58:0a:f4:03:07", "mtu": 1450, "sandbox": "/run/netns/x"},
    ],
    "ips": [{"address": "10.244.3.7/24", "gateway": "10.244.3.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.3.1"}],
    "dns": {},
}


@settings(suppress_health_check=list(HealthCheck))
@given(prev=prev_result)
def test_fuzzed_prev_result_is_rejected_or_safe_to_use(prev):
    """What parse_prev_result accepts, ADD's chaining and CHECK's comparisons can use."""
    import ipaddress

    from flannelish.cni import bridge, netconf, result
    from flannelish.cni.protocol import SUPPORTED_VERSIONS

    try:
        checked = netconf.parse_prev_result(prev)
    except CniError as exc:
        assert exc.cni_code == CniCode.INVALID_CONFIG
        return
    if checked is None:
        return
    chained = bridge._chain(checked, OUR_RESULT)  # ADD
    for version in SUPPORTED_VERSIONS:
        assert json.loads(result.render(chained, version))["cniVersion"] == version
    norm = result.normalize(checked)  # CHECK (bridge.cmd_check)
    for ip in norm["ips"]:
        ipaddress.ip_interface(ip["address"])
    for route in norm["routes"]:
        ipaddress.ip_network(route["dst"], strict=False)
    for iface in norm["interfaces"]:
        (iface.get("mac") or "").lower()


# --- nested and oversized stdin ----------------------------------------------------------

nesting = st.tuples(
    st.sampled_from(["[", '{"a": ', '{"prevResult": ', '{"dns": {"search": ']),
    st.one_of(st.integers(1, 1200), st.integers(1000, 100_000)),
    st.booleans(),  # closed (valid JSON when shallow enough) or left open
    st.sampled_from(["raw", "field"]),  # alone, or as the value of a netconf field
)


def _nested(opener: str, depth: int, closed: bool) -> str:
    closer = "]" if opener == "[" else "}" * (opener.count("{"))
    return opener * depth + ("0" + closer * depth if closed else "")


@settings(suppress_health_check=list(HealthCheck))
@given(spec=nesting, command=st.sampled_from(["ADD", "CHECK", "STATUS"]))
def test_fuzzed_deeply_nested_stdin_is_an_error_object(fuzz_dir, capfd, spec, command):
    from flannelish.cni.client import peek_json

    opener, depth, closed, where = spec
    value = _nested(opener, depth, closed)
    if where == "raw":
        raw = value.encode()
    else:
        head = json.dumps(_safe({"cniVersion": "1.1.0", "name": "fz"}, fuzz_dir))[:-1]
        raw = (head + ', "dns": ' + value + "}").encode()
    peek_json(raw)  # the fast path's peek never raises
    rc = cni_main.run(_env(command, "ctr", "x", "eth0", "", fuzz_dir), raw)
    out, err = capfd.readouterr()
    code = _assert_cni_output(rc, out, err, command)
    if not closed or depth > 2000:  # undecodable: code 6, never a RecursionError
        assert code == 6


oversized = st.one_of(
    st.integers(4300, 20_000).map(
        lambda n: '{"cniVersion": "1.1.0", "name": "fz", "mtu": ' + "9" * n + "}"
    ),
    st.integers(10_000, 300_000).map(
        lambda n: '{"cniVersion": "1.1.0", "name": "' + "a" * n + '"}'
    ),
    st.integers(1000, 20_000).map(
        lambda n: (
            '{"cniVersion": "1.1.0", "name": "fz", "ipam": {"routes": ['
            + ", ".join(['{"dst": "10.0.0.0/8", "table": 4294967296}'] * n)
            + "]}}"
        )
    ),
    st.sampled_from(["1e999", '"\\ud800"', '{"cniVersion": "1.1.0", "name": "\\udc80"}']),
)


@settings(suppress_health_check=list(HealthCheck))
@given(raw=oversized, command=st.sampled_from(["ADD", "CHECK"]))
def test_fuzzed_oversized_values_are_error_objects(fuzz_dir, capfd, raw, command):
    doc = raw
    if raw.startswith("{"):
        doc = raw[:-1] + ', "subnetFile": ' + json.dumps(str(fuzz_dir / "subnet.env")) + "}"
    rc = cni_main.run(_env(command, "ctr", "x", "eth0", "", fuzz_dir), doc.encode())
    out, err = capfd.readouterr()
    _assert_cni_output(rc, out, err, command)


# --- env values for every command, up to the end of validation ----------------------------


@settings(suppress_health_check=list(HealthCheck))
@given(
    command=st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS"]),
    cid=cids,
    ifname=ifnames,
    args=st.one_of(
        env_text, st.sampled_from(["IgnoreUnknown=1;IP=10.244.3.9", "MAC=0a:00:00:00:00:01"])
    ),
    path=env_text,
    doc=netconf,
)
def test_fuzzed_env_and_netconf_validation_raises_only_cni_errors(
    fuzz_dir, command, cid, ifname, args, path, doc
):
    """The validation every command runs before it touches anything (DEL and GC included)."""
    from flannelish.cni import netconf as nc
    from flannelish.cni.protocol import Invocation, parse_cni_args

    env = _env(command, cid, "x", ifname, args, fuzz_dir)
    env["CNI_PATH"] = path
    doc = _safe(dict(doc, cniVersion="1.1.0"), fuzz_dir)
    try:
        inv = Invocation.from_env(env)
        nc.load(
            doc, command, parse_cni_args(inv.args) if command in ("ADD", "DEL", "CHECK") else {}
        )
    except CniError:
        event("rejected")
        return
    event("accepted")
    # whatever passed is what the store and the kernel layer get: whole-string valid
    if command in ("ADD", "DEL", "CHECK"):
        assert "\n" not in inv.container_id + inv.ifname and inv.container_id.isascii()


# --- the fast path's wire format -----------------------------------------------------------

wire = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.binary(max_size=12), st.binary(max_size=200)).map(
        lambda parts: b"FLCNI2\n" + parts[0] + b"\n" + parts[1]
    ),
    st.tuples(st.integers(-5, 400), st.binary(max_size=200)).map(
        lambda parts: b"FLCNI2\n%d\n" % parts[0] + parts[1]
    ),
)


@settings(suppress_health_check=list(HealthCheck))
@given(data=wire)
def test_fuzzed_wire_requests_and_replies_decode_or_are_refused(data):
    from flannelish.cni.client import decode_reply, decode_request, encode_reply, encode_request

    request = decode_request(data)  # the server: None means "decline"
    if request is not None:
        env, stdin = request
        assert decode_request(encode_request(env, stdin)) == (env, stdin)
    try:
        code, out, err = decode_reply(data)  # the plugin: ValueError means code 11
    except ValueError:
        return
    assert decode_reply(encode_reply(code, out, err))[0] == code
