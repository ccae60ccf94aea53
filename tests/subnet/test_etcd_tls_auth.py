"""TLS (CA, client certificate) and username/password against an etcd with a test CA.

The certificates are made here with openssl; wrong credentials and an
untrusted CA must give one clear sentence, not a gRPC status dump.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lease_helpers import CONFIG, node_attrs

from flannelish.errors import EtcdAuthError
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
    # (docs/dependencies.md §1): the usable one has none.
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


def test_a_client_certificate_with_a_common_name_is_a_clear_error(secure_etcd, pki, registries):
    flags = _flags(pki, certfile=str(pki / "client-cn.crt"), keyfile=str(pki / "client-cn.key"))
    text = _error(registries(secure_etcd.client_url, **flags))
    assert "refuses a client certificate with a CommonName (CN)" in text


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
