"""The private PKI (overlay certs): lifetimes, names, renewal, revocation, checked with
openssl as an operator would."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from overlay import certs, identity
from overlay.exceptions import ConfigError
from overlay.server.certificate import covers


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def openssl_verify(
    directory: Path, ca: str, cert: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", ca, *extra, cert],
        cwd=directory,
        capture_output=True,
        text=True,
    )


def days(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc) / datetime.timedelta(days=1)


def test_init_makes_a_ten_year_ca_and_a_397_day_server_certificate(tmp_path: Path) -> None:
    written = certs.init(tmp_path, ["overlay.example.net", "198.18.0.1"])
    assert {p.name for p in written} == {"ca.pem", "ca.key", "server.pem", "server.key"}
    for key in ("ca.key", "server.key"):
        assert (tmp_path / key).stat().st_mode & 0o077 == 0
    ca, server = load(tmp_path / "ca.pem"), load(tmp_path / "server.pem")
    assert 3650 <= days(ca) <= 3651
    assert days(server) <= certs.MAX_DAYS + 1  # + the hour it is backdated
    assert certs.certificate_alt_names(server) == ["overlay.example.net", "198.18.0.1"]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verified = openssl_verify(tmp_path, "ca.pem", "server.pem", "-purpose", "sslserver")
    assert verified.returncode == 0, verified.stderr


def test_init_refuses_bad_names_long_lives_and_an_existing_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a DNS name nor an IP address"):
        certs.init(tmp_path, ["bad name"])
    with pytest.raises(ConfigError, match="give 1 to 397"):
        certs.init(tmp_path, ["overlay.test"], days=398)
    with pytest.raises(ConfigError, match="at least one --name"):
        certs.init(tmp_path, [])
    certs.init(tmp_path, ["overlay.test"])
    with pytest.raises(ConfigError, match="exists already; renew with 'overlay certs renew"):
        certs.init(tmp_path, ["overlay.test"])


def test_renew_keeps_the_names_and_the_key_unless_asked(tmp_path: Path) -> None:
    certs.init(tmp_path, ["overlay.test", "198.18.0.1"], days=10)
    before, pin = load(tmp_path / "server.pem"), identity.pin_of_file(tmp_path / "server.pem")
    assert certs.renew(tmp_path) == [tmp_path / "server.pem"]
    after = load(tmp_path / "server.pem")
    assert after.serial_number != before.serial_number
    assert certs.certificate_alt_names(after) == ["overlay.test", "198.18.0.1"]
    assert after.not_valid_after_utc > before.not_valid_after_utc
    assert identity.pin_of_file(tmp_path / "server.pem") == pin  # devices' pins stay valid
    certs.renew(tmp_path, new_key=True)
    assert identity.pin_of_file(tmp_path / "server.pem") != pin
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0
    assert openssl_verify(tmp_path, "ca.pem", "server.pem").returncode == 0
    assert not list(tmp_path.glob(".*.new"))


def test_renew_without_the_ca_key_is_one_clear_error(tmp_path: Path) -> None:
    certs.init(tmp_path, ["overlay.test"])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ConfigError, match="cannot load the CA"):
        certs.renew(tmp_path)


def test_client_certificates_and_their_revocation(tmp_path: Path) -> None:
    written = certs.issue_clients(tmp_path, ["dev1", "dev2"])
    assert {p.name for p in written} >= {"client-ca.pem", "client-ca.key", "client-ca.crl"}
    cert = load(tmp_path / "dev1.pem")
    assert days(cert) <= certs.MAX_DAYS + 1
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    crl_check = ("-crl_check", "-CRLfile", "client-ca.crl", "-purpose", "sslclient")
    assert openssl_verify(tmp_path, "client-ca.pem", "dev1.pem", *crl_check).returncode == 0
    certs.revoke(tmp_path, ["dev1"])
    certs.revoke(tmp_path, ["dev1"])  # twice is once
    refused = openssl_verify(tmp_path, "client-ca.pem", "dev1.pem", *crl_check)
    assert refused.returncode != 0 and "revoked" in refused.stdout + refused.stderr
    assert openssl_verify(tmp_path, "client-ca.pem", "dev2.pem", *crl_check).returncode == 0
    crl = x509.load_pem_x509_crl((tmp_path / "client-ca.crl").read_bytes())
    assert [entry.serial_number for entry in crl] == [cert.serial_number]
    with pytest.raises(ConfigError, match=r"cannot read .*dev9\.pem to revoke it"):
        certs.revoke(tmp_path, ["dev9"])


def test_a_certificate_of_another_ca_is_not_revoked_here(tmp_path: Path) -> None:
    certs.issue_clients(tmp_path / "a", ["dev1"])
    certs.issue_clients(tmp_path / "b", ["dev2"])
    (tmp_path / "a" / "dev2.pem").write_bytes((tmp_path / "b" / "dev2.pem").read_bytes())
    with pytest.raises(ConfigError, match="was not issued by"):
        certs.revoke(tmp_path / "a", ["dev2"])


@pytest.mark.parametrize(
    ("names", "wanted", "covered"),
    [
        (["overlay.test"], "overlay.test", True),
        (["overlay.test"], "OVERLAY.test.", True),
        (["*.example.net"], "ovl.example.net", True),
        (["*.example.net"], "a.ovl.example.net", False),
        (["*.example.net"], "example.net", False),
        (["198.18.0.1"], "198.18.0.1", True),
        (["overlay.test"], "198.18.0.1", False),
        (["198.18.0.1"], "198.18.0.2", False),
    ],
)
def test_which_names_a_certificate_covers(names: list[str], wanted: str, covered: bool) -> None:
    assert covers(names, wanted) is covered


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_keys_made_in_a_service_group_directory_are_readable_by_the_group(tmp_path: Path) -> None:
    """As /etc/overlay is root:overlay 0750 from the package: the service reads its key."""
    directory = tmp_path / "etc-overlay"
    directory.mkdir()
    os.chown(directory, 0, 64123)
    certs.init(directory, ["overlay.test"])
    key = (directory / certs.KEY_FILE).stat()
    assert (key.st_uid, key.st_gid, stat.S_IMODE(key.st_mode)) == (0, 64123, 0o640)
    ca_key = (directory / certs.CA_KEY).stat()
    assert stat.S_IMODE(ca_key.st_mode) == 0o600  # the CA's key stays root's alone
    certs.renew(directory, 30, new_key=True)
    key = (directory / certs.KEY_FILE).stat()
    assert (key.st_gid, stat.S_IMODE(key.st_mode)) == (64123, 0o640)
