"""The tunnels' listener: the listening socket's options (its TLS context is
:mod:`overlay.server.certificate`'s)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

from overlay import bridge
from overlay.exceptions import ConfigError

T = TypeVar("T")
# Connections the kernel may hold for us before accept(). asyncio's default, 100,
# overflowed in a storm: each dropped SYN cost its device a 1 s (then 3, 7 s)
# retransmission. Linux caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 4096


async def listen_for_tunnels(
    factory: Callable[[], asyncio.Protocol],
    host: str | None,
    port: int,
    context: ssl.SSLContext,
    handshake_timeout: float,
    shared: bool = False,
) -> asyncio.Server:
    """The tunnels' listener, set up before it listens: the connections it accepts
    inherit TCP keepalive and the small unsent bound of the kernel's send buffer
    (bridge.UNSENT_BYTES), which spares every new tunnel the system calls that set them.
    A worker's listener is ``shared`` with the other workers' (SO_REUSEPORT): the
    kernel spreads new connections over them; a single server's is not, so that a
    second server started by mistake fails instead of taking half the devices."""
    listener = await asyncio.get_running_loop().create_server(
        factory,
        host,
        port,
        ssl=context,
        reuse_address=True,
        reuse_port=shared,
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
