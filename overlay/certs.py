"""Making certificates: development ones with trustme, and device certificates for mutual TLS.

``init`` makes a CA, a server certificate and the CA file for devices; trustme
keeps that CA's key in memory and throws it away, so no one can issue more
server certificates from it. ``issue_clients`` makes device certificates for
mutual TLS from a separate client CA whose key it keeps (mode 0600) so more
devices can follow. Both are for labs and tests; real deployments bring
certificates from their own PKI (see certs/README.md). Using certificates
(loading, names, pins) is :mod:`overlay.identity`, which needs none of this.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import trustme

from overlay.exceptions import ConfigError

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
CLIENT_CA_FILE = "client-ca.pem"
CLIENT_CA_KEY = "client-ca.key"


def init(directory: Path, names: list[str]) -> list[Path]:
    """Write ca.pem, server.pem and server.key into ``directory``; return their paths.

    ``names`` are DNS names or IP addresses the server certificate is valid for.
    Refuses to overwrite an existing key, so a running lab never loses its identity.
    """
    if not names:
        raise ConfigError("give at least one --name (DNS name or IP address) for the server")
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not name.replace("-", "").replace(".", "").replace("*", "").isalnum():
                raise ConfigError(f"{name!r} is neither a DNS name nor an IP address") from None
    key_path = directory / KEY_FILE
    if key_path.exists():
        raise ConfigError(f"{key_path} exists already; remove it first to make new certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="overlay development CA")
    cert = ca.issue_cert(*names)
    ca_path, cert_path = directory / CA_FILE, directory / CERT_FILE
    ca.cert_pem.write_to_path(str(ca_path))
    with open(cert_path, "wb") as out:
        for pem in cert.cert_chain_pems:
            out.write(pem.bytes())
    write_private(key_path, cert.private_key_pem.bytes())
    return [ca_path, cert_path, key_path]


def write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only; never over an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def issue_clients(directory: Path, devices: list[str]) -> list[Path]:
    """Client certificates (``ID.pem`` with its key) naming each device, from the client CA
    in ``directory`` (made on first use: client-ca.pem for auth.client_ca_file)."""
    ca_path, ca_key = directory / CLIENT_CA_FILE, directory / CLIENT_CA_KEY
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if ca_key.exists():
        ca = trustme.CA.from_pem(ca_path.read_bytes(), ca_key.read_bytes())
    else:
        ca = trustme.CA(organization_name="overlay development client CA")
        ca.cert_pem.write_to_path(str(ca_path))
        write_private(ca_key, ca.private_key_pem.bytes())
        written.append(ca_path)
    for device in devices:
        cert_path = directory / f"{device}.pem"
        if cert_path.exists():
            raise ConfigError(f"{cert_path} exists already; remove it first to issue a new one")
        try:
            cert = ca.issue_cert(device, common_name=device)
        except ValueError as exc:
            raise ConfigError(
                f"cannot make a development certificate for {device!r} ({exc}); "
                "use your own PKI for such ids"
            ) from None
        with open(cert_path, "wb") as out:
            for pem in cert.cert_chain_pems:
                out.write(pem.bytes())
        write_private(directory / f"{device}.key", cert.private_key_pem.bytes())
        written += [cert_path, directory / f"{device}.key"]
    return written
