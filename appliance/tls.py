"""The device's TLS: verify the server's chain and name, pin its key, prove the device's
identity with a client certificate. The tunnel and the QoE sender share it."""

from __future__ import annotations

import ssl

from appliance.config import VrfConfig
from overlay import identity, log


class PinMismatchError(ssl.SSLCertVerificationError):
    """The server's public key is none of ``server.pin_sha256``."""

    def __init__(self, pin: str) -> None:
        super().__init__(f"the server's public key (pin {pin}) matches none of server.pin_sha256")
        self.pin = pin


def pinned(pins: frozenset[str]) -> type[ssl.SSLObject]:
    """An SSLObject class that refuses a server whose key is not pinned.

    The check runs when the TLS handshake completes, before a single byte of the
    request (and so of the credentials) is sent. asyncio and uvloop both make
    their TLS objects from ``SSLContext.sslobject_class``.
    """

    class PinnedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            pin = identity.spki_pin(der) if der else "none"
            if pin not in pins:
                raise PinMismatchError(pin)

    return PinnedSSLObject


def client_tls(vrf: VrfConfig) -> ssl.SSLContext:
    """Verify the server's chain and name, TLS 1.2 or newer; ``insecure`` alone turns that off.

    With pins, the server's public key must also be one of them (even when
    ``insecure``); with a client certificate, the device proves its identity.
    """
    context = ssl.create_default_context(
        cafile=str(vrf.ca_file) if vrf.ca_file is not None else None
    )
    identity.harden(context)
    if vrf.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if vrf.pins:
        context.sslobject_class = pinned(vrf.pins)
    if vrf.client_cert is not None:
        identity.load_cert_chain(context, vrf.client_cert, vrf.client_key)
    key_log = log.tls_key_log()
    if key_log is not None:
        context.keylog_filename = key_log
    return context
