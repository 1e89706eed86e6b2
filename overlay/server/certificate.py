"""The server's certificate at run time: loaded and checked at start, reloaded on SIGHUP
or from the admin API without closing a tunnel, its expiry watched.

Every load builds a whole new TLS context from the files (certificate, key, device CA
and CRL) and checks it before it is used: a key that does not match, a certificate that
has expired, does not cover ``listen.names`` or a CRL that cannot be read refuse the
start, and on reload keep the context in use. The listener keeps the first context for
its life (asyncio binds it to the listening socket); its SNI callback, which OpenSSL
calls early in every handshake (with or without a server name), hands the connection to
the newest context. So new handshakes use the new certificate and CRL, and connections
already up are not touched. (Loading into the first context instead would not do: an
OpenSSL store ignores a second CRL of the same issuer, so a revocation would never
take.)
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509

from overlay import identity
from overlay import log as overlay_log
from overlay.certs import certificate_alt_names
from overlay.exceptions import ConfigError
from overlay.server.config import ServerConfig
from overlay.status import CertificateStatus

log = structlog.get_logger("overlay.server")

WARN_BEFORE = 30 * 86400  # seconds of life left under which the server warns
CHECK_EVERY = 3600.0  # seconds between expiry checks


@dataclass(frozen=True)
class Loaded:
    """One load of the files: the context and what was checked of them."""

    context: ssl.SSLContext
    subject: str
    names: list[str]
    serial: str
    not_after: float
    crl_next_update: float | None
    revoked: int | None
    loaded: float


def tls_context(config: ServerConfig) -> ssl.SSLContext:
    """TLS 1.2 or newer, ECDHE with AEAD suites only (:func:`identity.harden`).

    No TLS 1.3 session tickets: devices never resume a session, and the two
    tickets OpenSSL sends by default cost a sixth of the server's handshake.
    No renegotiation: nothing needs it and a client could spend the server's CPU on it.
    With ``auth.client_ca_file``, devices are asked for a certificate from that CA;
    sending none is allowed here, and refused later for devices enrolled with
    ``--require-cert``; with ``auth.client_crl_file``, a revoked one fails the handshake.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    identity.harden(context)
    context.num_tickets = 0
    context.options |= ssl.OP_NO_RENEGOTIATION
    key_log = overlay_log.tls_key_log()
    if key_log is not None:
        context.keylog_filename = key_log
    identity.load_cert_chain(context, config.cert_file, config.key_file)
    if config.client_ca_file is not None:
        load_verify(context, "auth.client_ca_file", config.client_ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL
    if config.client_crl_file is not None:
        load_verify(context, "auth.client_crl_file", config.client_crl_file)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def load_verify(context: ssl.SSLContext, key: str, path: Path) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{key}: cannot load {path}: {exc}") from None


def load(config: ServerConfig, now: float) -> Loaded:
    """Build and check a context from the files named in ``config``, or raise ConfigError."""
    context = tls_context(config)
    try:
        cert = x509.load_pem_x509_certificate(config.cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"listen.cert_file: cannot read {config.cert_file}: {exc}") from None
    not_before = cert.not_valid_before_utc.timestamp()
    not_after = cert.not_valid_after_utc.timestamp()
    if now >= not_after:
        raise ConfigError(
            f"listen.cert_file: {config.cert_file} expired on {day(not_after)}; renew it "
            "(overlay certs renew DIR, or your PKI) and start again"
        )
    if now < not_before:
        raise ConfigError(
            f"listen.cert_file: {config.cert_file} is valid only from {day(not_before)}; "
            "check this host's clock"
        )
    names = certificate_alt_names(cert)
    for name in config.names:
        if not covers(names, name):
            raise ConfigError(
                f"listen.names: {config.cert_file} does not cover {name!r} (it names "
                f"{', '.join(names) or 'nothing'}); issue one for it or correct listen.names"
            )
    crl_next_update, revoked = None, None
    if config.client_crl_file is not None:
        crl_next_update, revoked = check_crl(config, now)
    return Loaded(
        context,
        cert.subject.rfc4514_string(),
        names,
        format(cert.serial_number, "x"),
        not_after,
        crl_next_update,
        revoked,
        now,
    )


def check_crl(config: ServerConfig, now: float) -> tuple[float | None, int]:
    """The CRL's next update and how many it revokes; an expired CRL is refused, since
    OpenSSL would refuse every device certificate of its CA with it."""
    assert config.client_crl_file is not None and config.client_ca_file is not None
    try:
        crl = x509.load_pem_x509_crl(config.client_crl_file.read_bytes())
        ca = x509.load_pem_x509_certificate(config.client_ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"auth.client_crl_file: cannot read {config.client_crl_file}: {exc}"
        ) from None
    if crl.issuer != ca.subject:
        raise ConfigError(
            f"auth.client_crl_file: {config.client_crl_file} is not from the CA of "
            "auth.client_ca_file"
        )
    next_update = crl.next_update_utc.timestamp() if crl.next_update_utc else None
    if next_update is not None and now >= next_update:
        raise ConfigError(
            f"auth.client_crl_file: {config.client_crl_file} expired on {day(next_update)} "
            "(its next update); refresh it (overlay certs revoke DIR)"
        )
    return next_update, len(crl)


def covers(names: list[str], wanted: str) -> bool:
    """Whether a certificate naming ``names`` is valid for ``wanted`` (RFC 6125: a
    wildcard stands for one whole left-most label)."""
    try:
        address = ipaddress.ip_address(wanted)
    except ValueError:
        wanted = wanted.lower().rstrip(".")
        for name in names:
            name = name.lower()
            if name == wanted:
                return True
            if name.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == name[2:]:
                return True
        return False
    return any(name == str(address) for name in names)


def day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


class ServerCertificate:
    """The certificate in use, the context new handshakes get, and reloads."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.current = load(config, time.time())
        self.reloads = 0
        self.failed_reloads = 0
        self.last_error: str | None = None
        self.context = self.current.context  # the listener's, for life
        self.context.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        newest = self.current.context
        if connection.context is not newest:
            connection.context = newest

    def reload(self) -> CertificateStatus:
        """Load the files again; on any error keep the certificate in use and say why."""
        try:
            loaded = load(self.config, time.time())
        except ConfigError as exc:
            self.failed_reloads += 1
            self.last_error = str(exc)
            log.error("certificate reload failed; keeping the one in use", error=str(exc))
        else:
            self.current = loaded
            self.reloads += 1
            self.last_error = None
            log.info(
                "certificate reloaded",
                serial=loaded.serial,
                expires=day(loaded.not_after),
                revoked=loaded.revoked,
            )
            self.warn_if_expiring()
        return self.status()

    def status(self) -> CertificateStatus:
        current = self.current
        return {
            "file": str(self.config.cert_file),
            "subject": current.subject,
            "names": current.names,
            "serial": current.serial,
            "not_after": current.not_after,
            "expires_in": current.not_after - time.time(),
            "loaded": current.loaded,
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "last_error": self.last_error,
            "crl_file": str(self.config.client_crl_file) if self.config.client_crl_file else None,
            "crl_next_update": current.crl_next_update,
            "revoked": current.revoked,
        }

    def warn_if_expiring(self) -> None:
        left = self.current.not_after - time.time()
        if left < WARN_BEFORE:
            log.warning(
                "certificate expires soon: renew it and reload (SIGHUP)",
                file=str(self.config.cert_file),
                expires=day(self.current.not_after),
                days_left=round(left / 86400, 1),
            )
        crl_next = self.current.crl_next_update
        if crl_next is not None and crl_next - time.time() < WARN_BEFORE:
            log.warning(
                "the device CRL's next update is near: past it every device certificate is "
                "refused; refresh it and reload (SIGHUP)",
                file=str(self.config.client_crl_file),
                next_update=day(crl_next),
            )

    async def watch(self) -> None:
        """Warn at start and then hourly while the certificate or the CRL is near its end."""
        while True:
            self.warn_if_expiring()
            await asyncio.sleep(CHECK_EVERY)
