"""Finding a CommonName in the client certificate's subject (subnet/etcdcert.py).

Certificates are made with openssl; CPython's private certificate decoder,
where present, is the oracle for the subject.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from flannelish.errors import ConfigError
from flannelish.subnet.etcdcert import has_common_name
from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore

pytestmark = pytest.mark.unit


def _cert(d: Path, name: str, subject: str, *extra: str, key: str = "ec") -> Path:
    key_args = ["-newkey", "rsa:2048"] if key == "rsa" else [
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    ]  # fmt: skip
    subprocess.run(
        ["openssl", "req", "-x509", *key_args, "-nodes", "-days", "1",
         "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"),
         "-subj", subject, *extra],
        check=True, capture_output=True,
    )  # fmt: skip
    return d / f"{name}.crt"


def _oracle_cn(path: Path) -> bool | None:
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    subject = decode(str(path)).get("subject", ())
    return any(name == "commonName" and value for rdn in subject for name, value in rdn)


SUBJECTS = {
    "cn": ("/CN=node", True),
    "cn-last": ("/O=system:nodes/OU=flannel/CN=system:node:n1", True),  # kubeadm-like
    "cn-utf8": ("/O=x/CN=nœud", True),
    "o-only": ("/O=node", False),
    "ou-and-o": ("/O=node/OU=CN=fake", False),  # "CN=" inside another attribute's value
    "empty": ("/", False),
}


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_the_subject_decides(tmp_path, name):
    subject, expected = SUBJECTS[name]
    extra = ["-addext", "subjectAltName=DNS:node"] if not expected else []
    path = _cert(tmp_path, name, subject, "-utf8", *extra)
    assert has_common_name(str(path)) is expected
    assert _oracle_cn(path) in (None, expected)


def test_rsa_and_a_chain_file_use_the_first_certificate(tmp_path):
    leaf = _cert(tmp_path, "leaf", "/O=node", key="rsa")
    ca = _cert(tmp_path, "ca", "/CN=ca")
    chain = tmp_path / "chain.pem"
    # A key before the certificates, as in a combined file, and the CA after the leaf.
    chain.write_bytes((tmp_path / "leaf.key").read_bytes() + leaf.read_bytes() + ca.read_bytes())
    assert has_common_name(str(chain)) is False
    chain.write_bytes(ca.read_bytes() + leaf.read_bytes())
    assert has_common_name(str(chain)) is True


@pytest.mark.parametrize(
    "content",
    [
        b"not a certificate\n",
        b"-----BEGIN CERTIFICATE-----\nbm90IERFUg==\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",  # truncated
    ],
)
def test_garbage_is_a_config_error_naming_the_flag(tmp_path, content):
    path = tmp_path / "garbage.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        has_common_name(str(path))
    assert "--etcd-certfile" in str(info.value)


def test_a_truncated_real_certificate_is_a_config_error(tmp_path):
    der = ssl.PEM_cert_to_DER_cert(_cert(tmp_path, "c", "/CN=node").read_text())
    cut = tmp_path / "cut.pem"
    cut.write_text(ssl.DER_cert_to_PEM_cert(der[:60]))
    with pytest.raises(ConfigError, match="--etcd-certfile: not a valid certificate"):
        has_common_name(str(cut))


def test_an_unreadable_file_is_a_config_error_naming_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--etcd-certfile: cannot read"):
        has_common_name(str(tmp_path / "missing.pem"))


def test_the_store_refuses_a_garbage_certificate_before_connecting(tmp_path):
    garbage = tmp_path / "garbage.pem"  # passes EtcdOptions' check for a PEM marker
    garbage.write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    )
    options = EtcdOptions.from_flags(
        endpoints="https://127.0.0.1:1", certfile=str(garbage), keyfile=str(garbage)
    )
    with pytest.raises(ConfigError, match="--etcd-certfile"):
        EtcdStore(options)
