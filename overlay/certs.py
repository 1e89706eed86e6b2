"""Development certificates, made with trustme: a CA, a server certificate, the CA file for devices.

For labs and tests only. trustme keeps the CA key in memory and throws it away,
so no one can issue more certificates from this CA later; real deployments
bring certificates from their own PKI (see certs/README.md).
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
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(cert.private_key_pem.bytes())
    return [ca_path, cert_path, key_path]
