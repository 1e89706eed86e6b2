"""TLS as both ends use it, with the standard library only: the protocol versions and
suites they allow, loading a certificate chain, the names of a verified peer, and
public-key pins.

The device agent needs exactly this and no certificate-making library (trustme,
cryptography: 15-19 MB of a small gateway's memory); making certificates is
:mod:`overlay.certs`, on the server's side.

``spki_pin`` is the pin a device checks the server's key against: the base64
SHA-256 of the DER SubjectPublicKeyInfo, the same value as curl's
``--pinnedpubkey sha256//…`` and RFC 7469, so it survives a renewed certificate
as long as the key stays. The SubjectPublicKeyInfo is found by walking the
certificate's DER (RFC 5280, section 4.1), which needs no ASN.1 library.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path
from typing import Any

from overlay.exceptions import ConfigError

# TLS 1.2 with forward secrecy and AEAD only (TLS 1.3's suites all are): no CBC suites
# (LUCKY13), no RSA key exchange, no DHE.
TLS12_SUITES = "ECDHE+AESGCM:ECDHE+CHACHA20"

_SEQUENCE = 0x30
_EXPLICIT_VERSION = 0xA0  # [0] EXPLICIT Version, absent in v1 certificates


class CertificateFormatError(ValueError):
    """The bytes are not a DER X.509 certificate."""


def _element(der: bytes, offset: int) -> tuple[int, int, int]:
    """The DER element at ``offset``: its tag, where its content starts, where it ends."""
    if offset + 2 > len(der):
        raise CertificateFormatError("truncated element")
    tag, length = der[offset], der[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(der):
            raise CertificateFormatError("bad length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise CertificateFormatError("element longer than the certificate")
    return tag, start, end


def spki(der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER certificate.

    Certificate ::= SEQUENCE { tbsCertificate, … }; tbsCertificate ::= SEQUENCE {
    [0] version OPTIONAL, serialNumber, signature, issuer, validity, subject,
    subjectPublicKeyInfo, … }
    """
    tag, start, _ = _element(der, 0)
    if tag != _SEQUENCE:
        raise CertificateFormatError("not a certificate")
    tag, offset, _ = _element(der, start)  # tbsCertificate
    if tag != _SEQUENCE:
        raise CertificateFormatError("no tbsCertificate")
    if der[offset : offset + 1] == bytes([_EXPLICIT_VERSION]):
        offset = _element(der, offset)[2]
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        offset = _element(der, offset)[2]
    tag, _, end = _element(der, offset)
    if tag != _SEQUENCE:
        raise CertificateFormatError("no subjectPublicKeyInfo")
    return der[offset:end]


def spki_pin(der: bytes) -> str:
    """The pin of a DER certificate's public key (base64 SHA-256 of its SubjectPublicKeyInfo)."""
    return base64.b64encode(hashlib.sha256(spki(der)).digest()).decode()


def pin_of_file(path: Path) -> str:
    """The pin of the first certificate in a PEM file (``overlay certs pin``)."""
    try:
        pem = path.read_text()
        return spki_pin(
            ssl.PEM_cert_to_DER_cert(pem[: pem.index("-----END CERTIFICATE-----") + 25])
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable PEM certificate ({exc})") from None


def certificate_names(peercert: dict[str, Any] | None) -> set[str]:
    """The names a verified peer certificate (``SSLSocket.getpeercert()``) gives: its
    subject's common name and its DNS subject alternative names."""
    if not peercert:
        return set()
    names = {
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    }
    names |= {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    return names


def harden(context: ssl.SSLContext) -> None:
    """TLS 1.2 or newer, ECDHE with AEAD suites only, no compression."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_SUITES)
    context.options |= ssl.OP_NO_COMPRESSION


def load_cert_chain(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """Load a certificate and its key into ``context``, or raise one clear ConfigError."""
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load certificate {cert} with key {key}: {exc}") from None
