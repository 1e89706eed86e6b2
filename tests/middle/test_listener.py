"""The tunnels' listener on loopback: what each accepted connection inherits from it."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

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


def test_a_client_offering_only_cbc_suites_is_refused(
    server_tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """LUCKY13 and friends: the server takes ECDHE with AEAD only, in TLS 1.2 too."""
    server_context, trust = server_tls
    trust.maximum_version = ssl.TLSVersion.TLSv1_2
    trust.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")

    async def handshake() -> None:
        listener = await listen_for_tunnels(asyncio.Protocol, "127.0.0.1", 0, server_context, 5)
        port = listener.sockets[0].getsockname()[1]
        try:
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=trust, server_hostname="overlay.test"
            )
        finally:
            listener.close()

    with pytest.raises((ssl.SSLError, ConnectionResetError)):  # the server sends an alert
        asyncio.run(handshake())
