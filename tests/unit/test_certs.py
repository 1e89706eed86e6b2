"""Pins, client certificates, the registry's certificate flag, the server's TLS: no sockets."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
import ssl
import subprocess
from pathlib import Path

import pytest

from appliance.config import load_appliance_config
from overlay import certs, identity
from overlay.exceptions import ConfigError
from overlay.server.registry import Registry


def test_the_pin_is_what_openssl_computes(tmp_path: Path) -> None:
    certs.init(tmp_path, ["overlay.test"])
    pem = tmp_path / certs.CERT_FILE
    openssl = subprocess.run(
        "openssl x509 -pubkey -noout -in server.pem | openssl pkey -pubin -outform der"
        " | openssl dgst -sha256 -binary | base64",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert identity.pin_of_file(pem) == openssl.stdout.strip()
    assert len(base64.b64decode(identity.pin_of_file(pem))) == 32


def test_a_file_without_a_certificate_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.pem").write_text("hello")
    with pytest.raises(ConfigError, match="not a readable PEM certificate"):
        identity.pin_of_file(tmp_path / "x.pem")


def test_client_certificates_name_their_device_and_the_ca_key_is_kept(tmp_path: Path) -> None:
    written = certs.issue_clients(tmp_path, ["dev1"])
    assert tmp_path / certs.CLIENT_CA_FILE in written
    assert (tmp_path / certs.CLIENT_CA_KEY).stat().st_mode & 0o077 == 0
    assert (tmp_path / "dev1.key").stat().st_mode & 0o077 == 0
    certs.issue_clients(tmp_path, ["dev2"])  # the same CA issues more later
    for device in ("dev1", "dev2"):
        decoded = ssl._ssl._test_decode_cert(str(tmp_path / f"{device}.pem"))  # type: ignore[attr-defined]
        assert identity.certificate_names(decoded) == {device}
        context = ssl.create_default_context(cafile=str(tmp_path / certs.CLIENT_CA_FILE))
        context.load_cert_chain(tmp_path / f"{device}.pem", tmp_path / f"{device}.key")
    with pytest.raises(ConfigError, match="exists already"):
        certs.issue_clients(tmp_path, ["dev1"])


def test_no_certificate_names_nothing() -> None:
    assert identity.certificate_names(None) == set()
    assert identity.certificate_names({}) == set()


def test_an_old_registry_gains_the_certificate_flag_and_keeps_its_devices(tmp_path: Path) -> None:
    path = tmp_path / "devices.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE devices (id TEXT PRIMARY KEY, password_hash TEXT, created REAL)")
    db.execute("INSERT INTO devices VALUES ('old-1', NULL, 1.0)")
    db.commit()
    db.close()
    registry = Registry(path)
    (old,) = registry.all()
    assert (old.device, old.client_cert) == ("old-1", False)
    registry.add("new-1", None, client_cert=True)
    assert registry.get("new-1").client_cert  # type: ignore[union-attr]
    registry.close()


def test_appliance_pins_and_client_certificate_settings(tmp_path: Path) -> None:
    certs.init(tmp_path, ["overlay.test"])
    certs.issue_clients(tmp_path, ["dev1"])
    pin = identity.pin_of_file(tmp_path / certs.CERT_FILE)
    base = """
[device]
id = "dev1"
[server]
urls = ["wss://overlay.test/tun"]
username = "dev1"
password = "s3cret-pass"
ca_file = "ca.pem"
"""
    path = tmp_path / "appliance.toml"
    path.write_text(
        base + f'pin_sha256 = ["sha256//{pin}"]\n'
        'client_cert_file = "dev1.pem"\nclient_key_file = "dev1.key"\n'
    )
    (vrf,) = load_appliance_config(path).vrfs
    assert vrf.pins == {pin} and vrf.client_cert == tmp_path / "dev1.pem"
    path.write_text(base + 'pin_sha256 = ["abc"]\n')
    with pytest.raises(ConfigError, match=r"server\.pin_sha256: 'abc' is not a base64 SHA-256"):
        load_appliance_config(path)
    path.write_text(base + 'client_cert_file = "dev1.pem"\n')
    with pytest.raises(ConfigError, match="client_cert_file and client_key_file together"):
        load_appliance_config(path)


def test_the_server_sends_no_session_tickets(
    server_tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Devices never resume a session; tickets would cost every handshake for nothing."""
    server_context, trust = server_tls
    server_bios, client_bios = (
        (ssl.MemoryBIO(), ssl.MemoryBIO()),
        (ssl.MemoryBIO(), ssl.MemoryBIO()),
    )
    server = server_context.wrap_bio(*server_bios, server_side=True)
    client = trust.wrap_bio(*client_bios, server_hostname="overlay.test")
    for _ in range(4):  # ClientHello, the server's flight, Finished, then anything after
        for end in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        server_bios[0].write(client_bios[1].read())
        client_bios[0].write(server_bios[1].read())
    with contextlib.suppress(ssl.SSLWantReadError):
        client.read(1)  # takes in whatever the server sent after the handshake
    assert client.version() == "TLSv1.3"
    assert not client.session.has_ticket
