"""TLS (CA, client certificate) and username/password against an etcd with a test CA.

The certificates are made here with openssl; wrong credentials and an
untrusted CA must give one clear sentence, not a gRPC status dump.  A client
certificate with a CommonName, which etcd's JSON gateway refuses, works over
the gRPC fallback; one without keeps the gateway and never loads gRPC
(docs/dependencies.md §1).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from lease_helpers import CONFIG, node_attrs

from flannelish.errors import EtcdAuthError
from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore, WatchResponseTooLarge
from flannelish.subnet.manager import SubnetManager
from flannelish.testing.etcd import EtcdMember

pytestmark = [pytest.mark.etcd, pytest.mark.slow]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip


def _make_cert(d: Path, ca: str, name: str, subject: str, san: str | None) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=d,
    )  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", str(ext),
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _make_cert(d, "ca", "server", "/CN=etcd", "IP:127.0.0.1")
    # etcd's JSON gateway refuses client certificates with a CommonName
    # (docs/dependencies.md §1): "client" has none and uses the gateway,
    # "client-cn" makes the store fall back to gRPC.
    _make_cert(d, "ca", "client", "/O=node", None)  # not an etcd user
    _make_cert(d, "ca", "client-cn", "/CN=node", None)
    return d


@pytest.fixture(scope="module")
def secure_etcd(pki):
    """etcd over https, client certificates required, password auth enabled (root:s3cret)."""
    member = EtcdMember(
        name="tls",
        scheme="https",
        extra_args=[
            "--cert-file", str(pki / "server.crt"), "--key-file", str(pki / "server.key"),
            "--trusted-ca-file", str(pki / "ca.crt"), "--client-cert-auth",
        ],
    )  # fmt: skip
    tls = [
        f"--cacert={pki / 'ca.crt'}",
        f"--cert={pki / 'client.crt'}",
        f"--key={pki / 'client.key'}",
    ]
    try:
        member.start()
        member.wait_healthy(ctl_args=tls)
        member.etcdctl("user", "add", "root", "--new-user-password=s3cret", ctl_args=tls)
        member.etcdctl("auth", "enable", ctl_args=tls)
        yield member
    finally:
        member.destroy()


def _flags(pki: Path, **overrides: str) -> dict[str, str]:
    flags = {
        "cafile": str(pki / "ca.crt"),
        "certfile": str(pki / "client.crt"),
        "keyfile": str(pki / "client.key"),
        "username": "root",
        "password": "s3cret",
    }
    flags.update(overrides)
    return {k: v for k, v in flags.items() if v}


def test_tls_with_client_certificate_and_password_works(secure_etcd, pki, registries):
    registry = registries(secure_etcd.client_url, **_flags(pki))
    registry.put_config(CONFIG)
    lease = SubnetManager(registry).acquire(node_attrs(1))
    assert [x.subnet for x in SubnetManager(registry).list_leases()] == [lease.subnet]


def _error(registry) -> str:
    with pytest.raises(EtcdAuthError) as info:
        registry.get_config()
    text = str(info.value)
    assert "\n" not in text and "_InactiveRpcError" not in text and "debug_error_string" not in text
    assert info.value.exit_code == 4
    return text


def test_wrong_password_is_a_clear_auth_error(secure_etcd, pki, registries):
    text = _error(registries(secure_etcd.client_url, **_flags(pki, password="wrong")))
    assert "wrong --etcd-username or --etcd-password for user 'root'" in text


def test_missing_credentials_say_that_etcd_needs_them(secure_etcd, pki, registries):
    text = _error(registries(secure_etcd.client_url, **_flags(pki, username="", password="")))
    assert "give --etcd-username and --etcd-password" in text


def _cn_flags(pki: Path, **overrides: str) -> dict[str, str]:
    cn = {"certfile": str(pki / "client-cn.crt"), "keyfile": str(pki / "client-cn.key")}
    return _flags(pki, **{**cn, **overrides})


def test_a_client_certificate_with_a_common_name_works_over_grpc(secure_etcd, pki, registries):
    registry = registries(secure_etcd.client_url, **_cn_flags(pki))
    registry.put_config(CONFIG)
    lease = SubnetManager(registry).acquire(node_attrs(1))
    assert [x.subnet for x in SubnetManager(registry).list_leases()] == [lease.subnet]

    options = EtcdOptions.from_flags(endpoints=secure_etcd.client_url, **_cn_flags(pki))
    with EtcdStore(options) as store:
        assert type(store._transport).__name__ == "GrpcTransport"
        rev = store.put("/cn/a", b"1")
        stream = store.watch("/cn/", rev + 1)
        try:
            lease_id, ttl = store.grant(30)
            assert 0 < store.ttl(lease_id) <= ttl
            written = store.put_if("/cn/b", b"\xff", 0, lease_id)
            assert written is not None and written.lease_id == lease_id
            assert store.put_if("/cn/b", b"again", 0) is None
            assert store.delete("/cn/a")
            events = []
            deadline = time.monotonic() + 10
            while len(events) < 2 and time.monotonic() < deadline:
                events += stream.next_events(1.0)  # [] for the "created" answer
            assert stream.established
            assert [(e.deleted, e.kv.key, e.kv.value) for e in events] == [
                (False, "/cn/b", b"\xff"),
                (True, "/cn/a", b""),
            ]
            kvs, at = store.get_prefix("/cn/", page_keys=1)
            assert [kv.key for kv in kvs] == ["/cn/b"] and at >= written.mod_revision
            store.revoke(lease_id)
            store.revoke(lease_id)  # already gone: not an error
            assert store.ttl(lease_id) == -1 and store.get("/cn/b") is None
        finally:
            stream.close()


def test_grpc_errors_are_as_clear_as_the_gateways(secure_etcd, pki, registries):
    text = _error(registries(secure_etcd.client_url, **_cn_flags(pki, password="wrong")))
    assert "wrong --etcd-username or --etcd-password for user 'root'" in text
    text = _error(registries(secure_etcd.client_url, **_cn_flags(pki, username="", password="")))
    assert "give --etcd-username and --etcd-password" in text
    text = _error(
        registries(secure_etcd.client_url, **_cn_flags(pki, cafile=str(pki / "other-ca.crt")))
    )
    assert "TLS handshake with etcd" in text
    assert f"not trusted by --etcd-cafile '{pki / 'other-ca.crt'}'" in text
    assert "(certificate verify failed: unable to get local issuer certificate)" in text


def test_grpc_pages_within_the_receive_limit(secure_etcd, pki):
    options = EtcdOptions.from_flags(endpoints=secure_etcd.client_url, **_cn_flags(pki))
    with EtcdStore(options) as writer, EtcdStore(options, max_receive_bytes=64 * 1024) as store:
        first = writer.put("/big/a", b"a" * 30_000)
        writer.put("/big/b", b"b" * 30_000)
        writer.put("/big/c", b"c" * 30_000)
        writer.put("/big/huge", b"h" * 100_000)
        kvs, _ = store.get_prefix("/big/")
        assert [(kv.key, len(kv.value), kv.oversized) for kv in kvs] == [
            ("/big/a", 30_000, False),
            ("/big/b", 30_000, False),
            ("/big/c", 30_000, False),
            ("/big/huge", 0, True),
        ]
        got = store.get("/big/huge")
        assert got is not None and got.oversized
        stream = store.watch("/big/", first)  # replays all four in one response
        try:
            with pytest.raises(WatchResponseTooLarge):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    stream.next_events(1.0)
        finally:
            stream.close()


def test_grpc_fails_over_from_a_dead_member(secure_etcd, pki):
    from flannelish.testing.etcd import free_port

    dead = f"https://127.0.0.1:{free_port()}"
    options = EtcdOptions.from_flags(endpoints=[dead, secure_etcd.client_url], **_cn_flags(pki))
    with EtcdStore(options) as store:
        store.put("/fo/k", b"v")
        assert store.current_endpoint == secure_etcd.client_url
        stream = store.watch("/fo/", 1)
        try:
            assert stream.endpoint == secure_etcd.client_url
        finally:
            stream.close()


LOADED = """
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import flannelish.cli.daemon
from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore, WatchResponseTooLarge
flags = json.loads(sys.argv[2])
with EtcdStore(EtcdOptions.from_flags(endpoints=sys.argv[1], **flags)) as store:
    store.put("/p/k", b"v")
    store.get_prefix("/p/")
    store.watch("/p/", 1).close()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "pyetcd", "google"))
print("loaded:", ",".join(m for m in loaded if "." not in m) or "none")
print("fork support:", os.environ.get("GRPC_ENABLE_FORK_SUPPORT"))
"""


def _run_store(url: str, flags: dict[str, str]) -> str:
    import json

    env = {k: v for k, v in __import__("os").environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    out = subprocess.run(
        [sys.executable, "-c", LOADED, url, json.dumps(flags)],
        capture_output=True, text=True, timeout=60, check=True, env=env,
    )  # fmt: skip
    return out.stdout


def test_only_a_certificate_with_a_common_name_loads_grpc(secure_etcd, pki):
    out = _run_store(secure_etcd.client_url, _flags(pki))
    assert "loaded: none" in out and "gRPC" not in out, out
    out = _run_store(secure_etcd.client_url, _cn_flags(pki))
    assert "loaded: google,grpc,pyetcd" in out, out
    # The daemon forks while the channel is open (docs/dependencies.md §2).
    assert "fork support: false" in out, out
    assert "has a CommonName, which etcd's JSON gateway refuses" in out, out
    assert "docs/dependencies.md §1" in out, out


def test_untrusted_ca_is_a_clear_tls_error(secure_etcd, pki, registries):
    text = _error(
        registries(secure_etcd.client_url, **_flags(pki, cafile=str(pki / "other-ca.crt")))
    )
    assert "TLS handshake with etcd" in text
    assert f"not trusted by --etcd-cafile '{pki / 'other-ca.crt'}'" in text


def test_ca_file_alone_is_enough_for_a_tls_server_without_client_auth(pki, registries):
    # Flannel ignores a lone --etcd-cafile (docs/flannel-compat.md §10); we use it.
    member = EtcdMember(
        name="tls-ca-only",
        scheme="https",
        extra_args=["--cert-file", str(pki / "server.crt"), "--key-file", str(pki / "server.key")],
    )
    try:
        member.start()
        member.wait_healthy(ctl_args=[f"--cacert={pki / 'ca.crt'}"])
        registry = registries(member.client_url, cafile=str(pki / "ca.crt"))
        registry.put_config(CONFIG)
        assert registry.get_config() == CONFIG
    finally:
        member.destroy()
