"""Whether the client certificate's subject has a CommonName (standard library only).

etcd refuses a client certificate with a CN on its JSON gateway, so such a
certificate makes EtcdStore talk gRPC instead (docs/dependencies.md §1).  The
standard library has no public X.509 parser; this reads the first PEM
certificate of the file and walks its DER just far enough to reach the
subject: Certificate -> tbsCertificate -> [version], serial, signature,
issuer, validity, subject (RFC 5280 §4.1).  The subject is a sequence of sets
of (OID, value) pairs; the CN's OID is 2.5.4.3.
"""

from __future__ import annotations

import base64
import binascii
import re

from flannelish.errors import ConfigError

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
_SEQUENCE, _SET, _OID, _EXPLICIT_0 = 0x30, 0x31, 0x06, 0xA0
_CN_OID = b"\x55\x04\x03"  # 2.5.4.3
_MAX_FILE = 1024 * 1024


class _BadDer(ValueError):
    pass


def has_common_name(path: str, flag: str = "--etcd-certfile") -> bool:
    """True if the first certificate in the PEM file `path` has a non-empty subject CN.

    An unreadable file or one without a well-formed certificate is a
    ConfigError naming `flag`.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}", exc.strerror) from None
    match = _PEM.search(data)
    if match is None:
        raise ConfigError(f"{flag}: not a PEM certificate", f"{path!r} has no CERTIFICATE block")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        return any(oid == _CN_OID and value for oid, value in subject_attributes(der))
    except (binascii.Error, _BadDer) as exc:
        raise ConfigError(f"{flag}: not a valid certificate", f"{path!r}: {exc}") from None


def subject_attributes(der: bytes) -> list[tuple[bytes, bytes]]:
    """The subject's (OID, value) pairs, both as raw DER contents."""
    cert = _only(der, 0, len(der), _SEQUENCE)
    tbs = _only(der, *cert, _SEQUENCE)
    fields = _children(der, *tbs)
    if fields and fields[0][0] == _EXPLICIT_0:  # the optional version
        fields = fields[1:]
    if len(fields) < 5:
        raise _BadDer("tbsCertificate is too short")
    tag, start, end = fields[4]  # serial, signature, issuer, validity, subject
    if tag != _SEQUENCE:
        raise _BadDer("the subject is not a SEQUENCE")
    out = []
    for rdn_tag, rdn_start, rdn_end in _children(der, start, end):
        if rdn_tag != _SET:
            raise _BadDer("a subject RDN is not a SET")
        for atv_tag, atv_start, atv_end in _children(der, rdn_start, rdn_end):
            if atv_tag != _SEQUENCE:
                raise _BadDer("a subject attribute is not a SEQUENCE")
            pair = _children(der, atv_start, atv_end)
            if len(pair) != 2 or pair[0][0] != _OID:
                raise _BadDer("a subject attribute is not (OID, value)")
            (_, o_start, o_end), (_, v_start, v_end) = pair
            out.append((der[o_start:o_end], der[v_start:v_end]))
    return out


def _only(der: bytes, start: int, end: int, tag: int) -> tuple[int, int]:
    """The content range of the one element expected first at `start`."""
    got, c_start, c_end = _element(der, start, end)
    if got != tag:
        raise _BadDer(f"expected tag 0x{tag:02x} at byte {start}, found 0x{got:02x}")
    return c_start, c_end


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, c_start, c_end = _element(der, start, end)
        out.append((tag, c_start, c_end))
        start = c_end
    return out


def _element(der: bytes, at: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `at`, within `end`."""
    if at + 2 > end:
        raise _BadDer(f"truncated at byte {at}")
    tag, length = der[at], der[at + 1]
    at += 2
    if tag & 0x1F == 0x1F:
        raise _BadDer("multi-byte tags do not occur in a certificate's subject path")
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 4 or at + n > end:
            raise _BadDer(f"bad length at byte {at - 1}")
        length = int.from_bytes(der[at : at + n], "big")
        at += n
    if at + length > end:
        raise _BadDer(f"an element at byte {at} runs past its container")
    return tag, at, at + length
