"""The tunnels' listener on loopback: what each accepted connection inherits from it."""

from __future__ import annotations

import asyncio
import socket
import ssl

from overlay import bridge
from overlay.server.listener import listen_for_tunnels


def test_accepted_tunnels_inherit_keepalive_and_the_unsent_bound(
    server_tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The server sets these on the listener only; every tunnel must still have them."""
    server_context, trust = server_tls

    async def accepted_socket_options() -> tuple[int, int]:
        options: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                options.set_result(
                    (
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT),
                    )
                )

        listener = await listen_for_tunnels(Probe, "127.0.0.1", 0, server_context, 5)
        port = listener.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=trust, server_hostname="overlay.test"
        )
        try:
            return await asyncio.wait_for(options, 5)
        finally:
            writer.close()
            listener.close()

    keepalive, unsent = asyncio.run(accepted_socket_options())
    assert keepalive == 1
    assert unsent == bridge.UNSENT_BYTES
