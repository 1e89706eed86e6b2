"""A private PKI for the overlay, made with ``cryptography``: a CA of bounded life, server
certificates of at most 397 days, device certificates for mutual TLS, their renewal and
their revocation (a CRL).

Files in one directory (``overlay certs … DIR``):

- ``ca.pem``/``ca.key``: the CA devices trust for the server (``server.ca_file``);
- ``server.pem``/``server.key``: the server's certificate and key (``listen.cert_file``);
- ``client-ca.pem``/``client-ca.key``: the CA of device certificates
  (``auth.client_ca_file``), ``ID.pem``/``ID.key`` per device, and
  ``client-ca.crl``, the devices it revoked (``auth.client_crl_file``).

Keys are ECDSA P-256: small, fast to sign a handshake with, accepted everywhere. Private
keys are written mode 0600 and never over an existing file; certificates are replaced
atomically (rename), so a server reloading at that moment reads the old file or the new
one, never half of one. Using certificates (loading, names, pins) is
:mod:`overlay.identity`, which the device agent needs without this module.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from overlay.exceptions import ConfigError

CA_FILE = "ca.pem"
CA_KEY = "ca.key"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
CLIENT_CA_FILE = "client-ca.pem"
CLIENT_CA_KEY = "client-ca.key"
CRL_FILE = "client-ca.crl"

CA_DAYS = 3650  # ten years: the CA is renewed with every device's trust, so rarely
# The CA/Browser Forum's ceiling for server certificates since 2020: short enough that
# renewal is a habit, and what TLS scanners (testssl.sh) expect of a server.
MAX_DAYS = 397
BACKDATE = datetime.timedelta(hours=1)  # a device whose clock is a little behind still agrees
# A CRL names its next update; past it, OpenSSL refuses every certificate of its CA. Ours
# promise a year: revoking again, or `overlay certs revoke DIR` with no id, refreshes it.
CRL_DAYS = 365


class Issuer:
    """A CA certificate with its private key: what signs certificates and CRLs."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def make(cls, name: str, now: datetime.datetime) -> Issuer:
        key = ec.generate_private_key(ec.SECP256R1())
        # A CN of its own, so that the certificates and CRLs of two PKIs never share an issuer
        unique = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest[:4].hex()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {unique}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Issuer:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"cannot load the CA {cert_path} with key {key_path}: {exc}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise ConfigError(f"{key_path} is not the key of {cert_path}")
        return cls(cert, key)

    def issue(
        self,
        names: list[str],
        key: ec.EllipticCurvePrivateKey,
        days: int,
        usage: x509.ObjectIdentifier,
        now: datetime.datetime,
    ) -> x509.Certificate:
        """A leaf certificate for ``names`` (the first is its CN), valid ``days`` from ``now``."""
        not_after = min(now + datetime.timedelta(days=days), self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(alt_names(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def check_days(days: int) -> int:
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"--days {days}: give 1 to {MAX_DAYS} (the most a TLS client accepts)")
    return days


def alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for a subjectAltName; anything else is refused."""
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        labels = name.removeprefix("*.").split(".")
        if not all(
            label and label.replace("-", "").isalnum() and label.isascii() for label in labels
        ):
            raise ConfigError(f"{name!r} is neither a DNS name nor an IP address")
        result.append(x509.DNSName(name.lower()))
    return result


def init(directory: Path, names: list[str], days: int = MAX_DAYS) -> list[Path]:
    """Make the CA (unless ``directory`` has one) and a server certificate for ``names``.

    Refuses to overwrite an existing server key, so a running server never loses its
    identity; renewing is :func:`renew`.
    """
    if not names:
        raise ConfigError("give at least one --name (DNS name or IP address) for the server")
    alt_names(names)
    check_days(days)
    key_path = directory / KEY_FILE
    if key_path.exists():
        raise ConfigError(
            f"{key_path} exists already; renew with 'overlay certs renew {directory}', "
            "or remove it first to start again"
        )
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ca = ca_of(directory, CA_FILE, CA_KEY, "overlay CA", written)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(names, key, days, ExtendedKeyUsageOID.SERVER_AUTH, now_utc())
    write_private(key_path, private_pem(key), service=True)
    replace(directory / CERT_FILE, pem(cert))
    return [*written, directory / CERT_FILE, key_path]


def renew(directory: Path, days: int = MAX_DAYS, new_key: bool = False) -> list[Path]:
    """A new server certificate with the names of the current one, from the CA in
    ``directory``; the key stays (so devices' pins stay valid) unless ``new_key``."""
    check_days(days)
    ca = Issuer.load(directory / CA_FILE, directory / CA_KEY)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = [str(name) for name in certificate_alt_names(current)]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the server certificate in {directory}: {exc}") from None
    if not names:
        raise ConfigError(f"{cert_path} names nothing to renew for; use 'overlay certs init'")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != current.public_key():
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    written = []
    if new_key:
        key = ec.generate_private_key(ec.SECP256R1())
        replace(key_path, private_pem(key), private=True, service=True)
        written.append(key_path)
    replace(cert_path, pem(ca.issue(names, key, days, ExtendedKeyUsageOID.SERVER_AUTH, now_utc())))
    return [cert_path, *written]


def certificate_alt_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of a certificate's subjectAltName, in its order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in san if isinstance(name, x509.DNSName | x509.IPAddress)]


def issue_clients(directory: Path, devices: list[str], days: int = MAX_DAYS) -> list[Path]:
    """Device certificates (``ID.pem`` with its key, the id as CN and DNS name) from the
    client CA in ``directory``, made on first use with an empty CRL."""
    check_days(days)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ca = ca_of(directory, CLIENT_CA_FILE, CLIENT_CA_KEY, "overlay device CA", written)
    if not (directory / CRL_FILE).exists():
        replace(directory / CRL_FILE, crl(ca, [], now_utc()))
        written.append(directory / CRL_FILE)
    for device in devices:
        cert_path = directory / f"{device}.pem"
        if cert_path.exists():
            raise ConfigError(f"{cert_path} exists already; remove it first to issue a new one")
        try:
            alt_names([device])
        except ConfigError:
            raise ConfigError(
                f"cannot name {device!r} in a certificate (a DNS-safe id is needed); "
                "use your own PKI for such ids"
            ) from None
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue([device], key, days, ExtendedKeyUsageOID.CLIENT_AUTH, now_utc())
        write_private(directory / f"{device}.key", private_pem(key))
        replace(cert_path, pem(cert))
        written += [cert_path, directory / f"{device}.key"]
    return written


def revoke(directory: Path, devices: list[str]) -> Path:
    """Add the certificates ``DIR/ID.pem`` of ``devices`` to the client CA's CRL and sign it
    anew (with no devices: only refresh its next update). The server applies it on reload."""
    ca = Issuer.load(directory / CLIENT_CA_FILE, directory / CLIENT_CA_KEY)
    crl_path = directory / CRL_FILE
    revoked: dict[int, datetime.datetime] = {}
    if crl_path.exists():
        try:
            current = x509.load_pem_x509_crl(crl_path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{crl_path} is not a PEM CRL ({exc}); remove it") from None
        revoked = {entry.serial_number: entry.revocation_date_utc for entry in current}
    now = now_utc()
    for device in devices:
        path = directory / f"{device}.pem"
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path} to revoke it: {exc}") from None
        try:
            cert.verify_directly_issued_by(ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise ConfigError(f"{path} was not issued by {directory / CLIENT_CA_FILE}") from None
        revoked.setdefault(cert.serial_number, now)
    replace(crl_path, crl(ca, sorted(revoked.items()), now))
    return crl_path


def crl(ca: Issuer, revoked: list[tuple[int, datetime.datetime]], now: datetime.datetime) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(min(now + datetime.timedelta(days=CRL_DAYS), ca.cert.not_valid_after_utc))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def ca_of(
    directory: Path, cert_name: str, key_name: str, title: str, written: list[Path]
) -> Issuer:
    """The CA kept in ``directory``, made (and added to ``written``) if there is none."""
    cert_path, key_path = directory / cert_name, directory / key_name
    if key_path.exists():
        return Issuer.load(cert_path, key_path)
    ca = Issuer.make(title, now_utc())
    write_private(key_path, private_pem(ca.key))
    replace(cert_path, pem(ca.cert))
    written += [cert_path, key_path]
    return ca


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes, service: bool = False) -> None:
    """Write a private key readable by its owner only (and the service's group, for the
    ``service``'s own key); never over an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        if service:
            share_with_group(out.fileno(), path.parent)
        out.write(data)


def share_with_group(fd: int, directory: Path) -> None:
    """Let the group of ``directory`` read a key root writes there, when it is a group of
    its own: the package makes /etc/overlay root:overlay 0750, and the service, which
    runs as overlay, must read the key that ``overlay certs`` makes for it as root."""
    group = directory.stat().st_gid
    if os.geteuid() == 0 and group != 0:
        os.fchown(fd, 0, group)
        os.fchmod(fd, 0o640)


def replace(path: Path, data: bytes, private: bool = False, service: bool = False) -> None:
    """Write ``path`` whole through a temporary file and a rename: readers see the old
    contents or the new, never a mix."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        if service:
            share_with_group(out.fileno(), path.parent)
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
