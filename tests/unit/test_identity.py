"""Public-key pins without an ASN.1 library: the DER walk agrees with cryptography's."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ssl

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from overlay import identity


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_the_pin_is_the_hash_of_the_subject_public_key_info(key_type: trustme.KeyType) -> None:
    authority = trustme.CA(key_type=key_type)
    for pem in (
        authority.cert_pem.bytes(),
        authority.issue_cert("overlay.test", key_type=key_type).cert_chain_pems[0].bytes(),
    ):
        certificate = x509.load_pem_x509_certificate(pem)
        der = certificate.public_bytes(Encoding.DER)
        expected = certificate.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
        assert identity.spki(der) == expected
        assert (
            identity.spki_pin(der) == base64.b64encode(hashlib.sha256(expected).digest()).decode()
        )


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_certificate_format_error(data: bytes) -> None:
    with contextlib.suppress(identity.CertificateFormatError):
        identity.spki(data)


def test_a_truncated_certificate_is_refused() -> None:
    der = x509.load_pem_x509_certificate(trustme.CA().cert_pem.bytes()).public_bytes(Encoding.DER)
    for cut in (1, 10, 100, len(der) // 2):
        with pytest.raises(identity.CertificateFormatError):
            identity.spki(der[:cut])


def test_both_ends_offer_tls12_only_with_ecdhe_and_aead() -> None:
    context = ssl.create_default_context()
    identity.harden(context)
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12), tls12
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
