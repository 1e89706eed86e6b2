"""The tunnels' listener: the server's TLS context and the listening socket's options."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

from overlay import bridge, identity
from overlay import log as overlay_log
from overlay.exceptions import ConfigError
from overlay.server.config import ServerConfig

T = TypeVar("T")
# Connections the kernel may hold for us before accept(). asyncio's default, 100,
# overflowed in a storm: each dropped SYN cost its device a 1 s (then 3, 7 s)
# retransmission. Linux caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 4096


def tls_context(config: ServerConfig) -> ssl.SSLContext:
    """TLS 1.2 or newer, ECDHE with AEAD suites only (:func:`identity.harden`).

    No TLS 1.3 session tickets: devices never resume a session, and the two
    tickets OpenSSL sends by default cost a sixth of the server's handshake.
    With ``auth.client_ca_file``, devices are asked for a certificate from that CA;
    sending none is allowed here, and refused later for devices enrolled with
    ``--require-cert``.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    identity.harden(context)
    context.num_tickets = 0
    key_log = overlay_log.tls_key_log()
    if key_log is not None:
        context.keylog_filename = key_log
    identity.load_cert_chain(context, config.cert_file, config.key_file)
    if config.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"auth.client_ca_file: cannot load {config.client_ca_file}: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


async def listen_for_tunnels(
    factory: Callable[[], asyncio.Protocol],
    host: str | None,
    port: int,
    context: ssl.SSLContext,
    handshake_timeout: float,
) -> asyncio.Server:
    """The tunnels' listener, set up before it listens: the connections it accepts
    inherit TCP keepalive and the small unsent bound of the kernel's send buffer
    (bridge.UNSENT_BYTES), which spares every new tunnel the system calls that set them."""
    listener = await asyncio.get_running_loop().create_server(
        factory,
        host,
        port,
        ssl=context,
        reuse_address=True,
        backlog=LISTEN_BACKLOG,
        ssl_handshake_timeout=handshake_timeout,
        start_serving=False,
    )
    for sock in listener.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        bridge.bound_kernel_send_buffer(sock)
    await listener.start_serving()
    return listener


async def listen(starting: Awaitable[T], where: str) -> T:
    """Await a listener; a port in use or an address not here becomes one clear line."""
    try:
        return await starting
    except OSError as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None
