"""The server's certificate at run time over real TLS on loopback: reloads that leave
open connections alone, refused files that keep the certificate in use, revocation,
and what the admin API and /metrics say of it."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from prometheus_client.parser import text_string_to_metric_families

from overlay import certs
from overlay.exceptions import ConfigError
from overlay.server import admin
from overlay.server.certificate import ServerCertificate
from overlay.server.config import ServerConfig, load_server_config
from overlay.server.node import Node
from tests.faketun import FakeTun
from tests.middle.conftest import make_node, write_config

TOKEN = "t0ken-for-tests"


def server_config(directory: Path, listen: str = "", auth: str = "") -> ServerConfig:
    """A node's config with a fresh PKI; ``listen`` and ``auth`` lines go into those tables."""
    path = write_config(directory)
    text = path.read_text().replace("[listen]\n", f"[listen]\n{listen}\n")
    path.write_text(text.replace("[auth]\n", f"[auth]\n{auth}\n"))
    return load_server_config(path)


def mutual_tls(directory: Path, devices: list[str]) -> ServerConfig:
    certs.issue_clients(directory / "clients", devices)
    return server_config(
        directory,
        auth=f'client_ca_file = "clients/{certs.CLIENT_CA_FILE}"\n'
        f'client_crl_file = "clients/{certs.CRL_FILE}"',
    )


@pytest.fixture
async def echo() -> AsyncIterator[list[asyncio.Server]]:
    """Servers started by the test (closed after it); each echoes what it reads."""
    servers: list[asyncio.Server] = []
    yield servers
    for server in servers:
        server.close()


async def serve(certificate: ServerCertificate, servers: list[asyncio.Server]) -> int:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=certificate.context)
    servers.append(server)
    return int(server.sockets[0].getsockname()[1])


async def connect(
    port: int, directory: Path, client: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A TLS connection as a device makes it; returns it and the server certificate's serial."""
    context = ssl.create_default_context(cafile=directory / certs.CA_FILE)
    if client is not None:
        clients = directory / "clients"
        context.load_cert_chain(clients / f"{client}.pem", clients / f"{client}.key")
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="overlay.test"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return reader, writer, x509.load_der_x509_certificate(der).serial_number


async def refused(port: int, directory: Path, client: str) -> bool:
    """Whether the server refuses ``client``'s certificate: in TLS 1.3 the client has
    finished its handshake when the server's alert comes, so it shows at the first read."""
    try:
        reader, writer, _ = await connect(port, directory, client)
    except (ssl.SSLError, ConnectionError):
        return True
    answered = await echoes(reader, writer)
    writer.close()
    return not answered


async def echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"ping")
    try:
        return await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


async def test_a_renewed_certificate_serves_new_handshakes_and_open_ones_stay(
    tmp_path: Path, echo: list[asyncio.Server]
) -> None:
    certificate = ServerCertificate(server_config(tmp_path))
    port = await serve(certificate, echo)
    reader, writer, first = await connect(port, tmp_path)
    certs.renew(tmp_path)
    status = certificate.reload()
    assert status["reloads"] == 1 and status["last_error"] is None
    _, later_writer, second = await connect(port, tmp_path)
    assert second != first and format(second, "x") == status["serial"]
    assert await echoes(reader, writer)  # the connection from before the reload is untouched
    writer.close()
    later_writer.close()


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        ("key", "cannot load certificate"),
        ("certificate", "cannot load certificate"),
        ("names", "does not cover"),
    ],
)
async def test_a_refused_reload_keeps_the_certificate_in_use(
    tmp_path: Path, echo: list[asyncio.Server], damage: str, error: str
) -> None:
    certificate = ServerCertificate(server_config(tmp_path, 'names = ["overlay.test"]'))
    port = await serve(certificate, echo)
    *_, before = await connect(port, tmp_path)
    if damage == "key":  # a key that is not the certificate's
        (tmp_path / certs.KEY_FILE).write_bytes(
            certs.private_pem(ec.generate_private_key(ec.SECP256R1()))
        )
    elif damage == "certificate":
        (tmp_path / certs.CERT_FILE).write_text("not a certificate")
    else:  # a renewal for other names
        (tmp_path / certs.KEY_FILE).unlink()
        certs.init(tmp_path, ["elsewhere.test"])
    status = certificate.reload()
    assert error in str(status["last_error"])
    assert status["failed_reloads"] == 1 and status["serial"] == format(before, "x")
    *_, after = await connect(port, tmp_path)
    assert after == before


def test_the_server_refuses_to_start_with_an_expired_or_misnamed_certificate(
    tmp_path: Path,
) -> None:
    config = server_config(tmp_path, 'names = ["overlay.test", "198.18.0.1"]')
    with pytest.raises(ConfigError, match=r"listen.names: .* does not cover '198.18.0.1'"):
        ServerCertificate(config)
    ca = certs.Issuer.load(tmp_path / certs.CA_FILE, tmp_path / certs.CA_KEY)
    key = ec.generate_private_key(ec.SECP256R1())
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = ca.issue(["overlay.test"], key, 2, ExtendedKeyUsageOID.SERVER_AUTH, long_ago)
    (tmp_path / certs.CERT_FILE).write_bytes(certs.pem(expired))
    (tmp_path / certs.KEY_FILE).write_bytes(certs.private_pem(key))
    with pytest.raises(ConfigError, match=r"expired on .*; renew it"):
        ServerCertificate(load_server_config(tmp_path / "server.toml"))


async def test_a_revoked_device_certificate_fails_new_handshakes_after_reload(
    tmp_path: Path, echo: list[asyncio.Server]
) -> None:
    certificate = ServerCertificate(mutual_tls(tmp_path, ["dev1", "dev2"]))
    assert certificate.status()["revoked"] == 0
    port = await serve(certificate, echo)
    reader, writer, _ = await connect(port, tmp_path, "dev1")
    assert await echoes(reader, writer)
    certs.revoke(tmp_path / "clients", ["dev1"])
    assert not await refused(port, tmp_path, "dev1")  # the reload is what applies it
    assert certificate.reload()["revoked"] == 1
    assert await refused(port, tmp_path, "dev1")
    other_reader, other_writer, _ = await connect(port, tmp_path, "dev2")
    assert await echoes(other_reader, other_writer)
    # What is open stays open: `overlay device unbind dev1` is what closes its tunnels.
    assert await echoes(reader, writer)
    writer.close()
    other_writer.close()


async def test_an_unreadable_crl_refuses_the_start_and_a_reload(tmp_path: Path) -> None:
    config = mutual_tls(tmp_path, ["dev1"])
    certificate = ServerCertificate(config)
    crl = tmp_path / "clients" / certs.CRL_FILE
    crl.write_text("garbage")
    assert "auth.client_crl_file" in str(certificate.reload()["last_error"])
    with pytest.raises(ConfigError, match=r"auth\.client_crl_file: cannot load"):
        ServerCertificate(config)
    other = tmp_path / "other"
    certs.issue_clients(other, ["dev9"])
    crl.write_bytes((other / certs.CRL_FILE).read_bytes())
    with pytest.raises(ConfigError, match=r"is not from the CA of auth\.client_ca_file"):
        ServerCertificate(config)


async def test_the_admin_api_reloads_and_metrics_tell_the_expiry(
    tmp_path: Path, tun: FakeTun
) -> None:
    config = server_config(tmp_path)
    certificate = ServerCertificate(config)
    node: Node = await make_node(config, tun, certificate.status)
    app = admin.application(TOKEN, node.status, {}, False, node.refusals, reload=certificate.reload)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/api/v1/reload")).status == 401
        certs.renew(tmp_path)
        response = await client.post("/api/v1/reload", headers=bearer)
        assert response.status == 200 and (await response.json())["reloads"] == 1
        (tmp_path / certs.CERT_FILE).write_text("oops")
        response = await client.post("/api/v1/reload", headers=bearer)
        assert response.status == 422 and "cannot load" in (await response.json())["last_error"]
        text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    left = families["overlay_certificate_expiry_seconds"].samples[0].value
    assert 396 * 86400 < left <= 397 * 86400
    reloads = {s.labels["result"]: s.value for s in families["overlay_certificate_reloads"].samples}
    assert reloads == {"ok": 1, "refused": 1}
    await node.store.close()
