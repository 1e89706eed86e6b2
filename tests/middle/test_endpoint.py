"""The tunnel endpoint over real TLS on loopback, with real stores and a fake TUN: the
refusals in their documented order with their counters, the hello, and 4001 takeover."""

from __future__ import annotations

import asyncio
import gc
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from overlay import certs, wire
from overlay.server.certificate import tls_context
from overlay.server.config import load_server_config
from overlay.server.endpoint import Endpoint
from overlay.server.listener import listen_for_tunnels
from overlay.server.node import Node
from tests.faketun import FakeTun
from tests.middle.conftest import PASSWORD, make_node, write_config
from tests.packets import ipv4


@dataclass
class Served:
    node: Node
    url: str
    trust: ssl.SSLContext


async def serve(tmp_path: Path, tun: FakeTun, pool: str, extra: str = "") -> AsyncIterator[Served]:
    config = load_server_config(write_config(tmp_path, extra, pool=pool))
    node = await make_node(config, tun)
    runner = web.AppRunner(Endpoint(node).app(), access_log=None, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    listener = await listen_for_tunnels(
        node.gate.wrap(runner.server), "127.0.0.1", 0, tls_context(config), 5
    )
    port = listener.sockets[0].getsockname()[1]
    trust = ssl.create_default_context(cafile=tmp_path / certs.CA_FILE)
    try:
        yield Served(node, f"wss://127.0.0.1:{port}{config.path}", trust)
    finally:
        listener.close()
        await node.close_sessions()
        await runner.cleanup()
        await node.store.close()


@pytest.fixture
async def served(tmp_path: Path, tun: FakeTun) -> AsyncIterator[Served]:
    async for s in serve(tmp_path, tun, "169.254.1.1-169.254.1.2"):
        yield s


def headers(device: str = "dev1", password: str = PASSWORD) -> dict[str, str]:
    return {
        wire.HEADER_DEVICE: device,
        "Authorization": aiohttp.encode_basic_auth("VPN", password),
    }


async def status_of(
    served: Served,
    request_headers: dict[str, str],
    protocols: tuple[str, ...] = (wire.SUBPROTOCOL,),
) -> int:
    """The HTTP status with which the endpoint refuses a tunnel request (101: accepted)."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(
                served.url,
                protocols=protocols,
                headers=request_headers,
                ssl=served.trust,
                server_hostname="overlay.test",
            )
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def test_refusals_come_in_the_documented_order_and_are_counted(served: Served) -> None:
    await served.node.store.enroll("dev1", None)
    no_device = {"Authorization": aiohttp.encode_basic_auth("VPN", PASSWORD)}
    assert await status_of(served, no_device, protocols=("ovl.v2",)) == 426  # version first
    assert await status_of(served, no_device) == 400  # then the headers
    assert await status_of(served, headers("stranger")) == 403  # not enrolled (counts)
    assert await status_of(served, headers(password="wrong-password")) == 401
    assert await status_of(served, headers(password="wrong-password")) == 401
    assert await status_of(served, headers(password="another")) == 429  # max_failures = 3
    refusals = served.node.refusals
    assert dict(refusals) == {
        "version": 1,
        "bad-device": 1,
        "not-enrolled": 1,
        "bad-credentials": 2,
        "rate-limited": 1,
    }


async def test_an_exhausted_pool_is_refused_with_503(served: Served) -> None:
    for device in ("dev1", "dev2", "dev3"):
        await served.node.store.enroll(device, None)
    assert await status_of(served, headers("dev1")) == 101
    assert await status_of(served, headers("dev2")) == 101
    assert await status_of(served, headers("dev3")) == 503
    assert served.node.refusals["pool-exhausted"] == 1
    assert len(served.node.store) == 2  # nothing stored for the refused device


async def connect(served: Served, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(
        served.url,
        protocols=(wire.SUBPROTOCOL,),
        headers=headers(),
        ssl=served.trust,
        server_hostname="overlay.test",
    )


async def test_the_hello_then_a_newer_session_replaces_the_older_with_4001(
    served: Served,
) -> None:
    await served.node.store.enroll("dev1", None)
    async with aiohttp.ClientSession() as http:
        first = await connect(served, http)
        hello = json.loads((await first.receive(timeout=5)).data)
        config = served.node.config
        assert hello == {
            "type": "hello",
            "version": 1,
            "address": "169.254.1.1",
            "prefix": 16,
            "server": "169.254.0.1",
            "mtu": config.mtu,
            "ping_interval": config.ping_interval,
            "max_message": config.max_message,
            "session": hello["session"],
            "offload": False,  # this client did not ask for it
        }
        assert (config.mtu, config.ping_interval, config.max_message) == (1400, 60, 262144)
        second = await connect(served, http)
        again = json.loads((await second.receive(timeout=5)).data)
        assert again["address"] == hello["address"]  # sticky
        assert again["session"] != hello["session"]
        closed = await first.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE
        assert closed.data == wire.CloseCode.REPLACED
        await asyncio.sleep(0.05)
        sessions = served.node.status()["sessions"]
        assert [(s["device"], s["session"]) for s in sessions] == [("dev1", again["session"])]
        assert served.node.status()["server"]["handshakes"] == 2
        await second.close()


async def tunnel(served: Served) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """An open tunnel of the enrolled device dev1, past its hello."""
    await served.node.store.enroll("dev1", None)
    async with aiohttp.ClientSession() as http:
        ws = await connect(served, http)
        await ws.receive(timeout=5)
        yield ws
        await ws.close()


async def test_garbage_is_counted_and_the_tunnel_stays_up(served: Served) -> None:
    async for ws in tunnel(served):
        await ws.send_bytes(b"\x00" * 30)  # not an IP packet
        await ws.send_str("not a frame")
        await ws.ping()
        await asyncio.sleep(0.2)
        assert not ws.closed
        drops = served.node.status()["drops"]
        assert (drops.get("malformed"), drops.get("unsupported")) == (1, 1)


async def test_a_message_over_max_message_is_closed_with_1009(served: Served) -> None:
    async for ws in tunnel(served):
        await ws.send_bytes(b"\x45" + bytes(served.node.config.max_message))
        closed = await ws.receive(timeout=5)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1009)


async def test_a_device_that_keeps_sending_refused_traffic_is_closed_with_1008(
    tmp_path: Path, tun: FakeTun
) -> None:
    limits = "[firewall]\nrefused_rate = 1\nrefused_burst = 100\n"
    async for served in serve(tmp_path, tun, "169.254.1.1-169.254.1.2", limits):
        async for ws in tunnel(served):
            refused = ipv4("169.254.1.1", "169.254.0.1", 17, b"", 40000, 9999)
            await ws.send_bytes(refused * 60)  # within the burst
            await ws.send_bytes(refused * 60)  # past it
            closed = await ws.receive(timeout=5)
            assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1008)
        assert served.node.refusals["refused-traffic"] == 1
        assert served.node.status()["drops"]["policy"] == 120


@pytest.mark.parametrize(
    ("frame", "what"),
    [
        (b"\x09\x00", "a fragment of a ping"),
        (b"\x80\x00", "a continuation of nothing"),
        (b"\x8f\x00", "an opcode WebSocket does not have"),
    ],
)
async def test_what_is_not_websocket_is_closed_with_1002(
    served: Served, frame: bytes, what: str
) -> None:
    async for ws in tunnel(served):
        writer = ws._writer.transport
        assert writer is not None
        writer.write(frame)
        closed = await ws.receive(timeout=5)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1002), what


async def test_a_close_without_a_code_is_answered_without_one(served: Served) -> None:
    async for ws in tunnel(served):
        transport = ws._writer.transport
        assert transport is not None
        transport.write(b"\x88\x00")  # a close frame with no payload (RFC 6455, 5.5.1)
        closed = await ws.receive(timeout=5)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 0)
        await asyncio.sleep(0.1)
        assert served.node.status()["sessions"] == []


async def test_after_the_upgrade_nothing_of_aiohttp_s_request_stays(served: Served) -> None:
    """The session is the connection's protocol: no task, request, handler or WebSocket
    response of aiohttp's lives on per tunnel, and the tunnel still answers."""
    await served.node.store.enroll("dev1", None)
    tasks = len(asyncio.all_tasks())
    async with aiohttp.ClientSession() as http:
        tunnels = []
        for vrf in ("a", "b"):
            ws = await http.ws_connect(
                served.url,
                protocols=(wire.SUBPROTOCOL,),
                headers=headers() | {wire.HEADER_VRF: vrf},
                ssl=served.trust,
                server_hostname="overlay.test",
                autoping=False,  # the test sees the pong
            )
            await ws.receive(timeout=5)
            tunnels.append(ws)
        await asyncio.sleep(0.1)  # aiohttp's handlers end after the hello
        gc.collect()
        kept = [
            type(o).__name__
            for o in gc.get_objects()
            if isinstance(o, web.RequestHandler | web.BaseRequest | web.WebSocketResponse)
        ]
        assert kept == []
        assert len(asyncio.all_tasks()) - tasks <= 2  # the client's own readers, if any
        await tunnels[0].ping()
        pong = await tunnels[0].receive(timeout=5)
        assert pong.type is aiohttp.WSMsgType.PONG
        assert served.node.status()["sessions"][0]["state"] == "open"
        for ws in tunnels:
            await ws.close()
        assert [ws.close_code for ws in tunnels] == [1000, 1000]
    await asyncio.sleep(0.1)
    assert served.node.status()["sessions"] == []


async def test_a_device_that_stops_reading_costs_its_own_queue_not_the_others(
    served: Served, tun: FakeTun
) -> None:
    """The server's writes to a device that stopped reading wait in that session's
    bounded queue (then are dropped and counted); another tunnel's packets still leave
    at once (Tailscale derp's TestSendFreeze, over real TLS)."""
    await served.node.store.enroll("dev1", None)
    routing = asyncio.create_task(served.node.router.run())
    async with aiohttp.ClientSession() as http:
        stalled, lively = [
            await http.ws_connect(
                served.url,
                protocols=(wire.SUBPROTOCOL,),
                headers=headers() | {wire.HEADER_VRF: vrf},
                ssl=served.trust,
                server_hostname="overlay.test",
            )
            for vrf in ("a", "b")
        ]
        addresses = [
            json.loads((await ws.receive(timeout=5)).data)["address"] for ws in (stalled, lively)
        ]
        stalled_transport = stalled._writer.transport
        assert stalled_transport is not None
        stalled_transport.pause_reading()
        session = served.node.router.by_key[("dev1", "a")]
        bulk = ipv4("169.254.0.1", addresses[0], 17, bytes(1300), 40000, 161)
        for _ in range(8000):  # 10 MB: more than loopback's buffers and the queue hold
            while True:
                try:
                    tun.inject(bulk)
                    break
                except BlockingIOError:  # the fake TUN's own queue: let the router read
                    await asyncio.sleep(0.001)
            if session.counters.drops:
                break
        drops = session.counters.drops
        assert drops["queue-full"] + drops["stale"] > 0
        assert session.sender.outbox.size <= served.node.config.queue_bytes
        poll = ipv4("169.254.0.1", addresses[1], 17, b"get", 40000, 161)
        tun.inject(poll)
        got = await lively.receive(timeout=5)
        assert (got.type, got.data) == (aiohttp.WSMsgType.BINARY, poll)
        stalled_transport.resume_reading()
        await stalled.close()
        await lively.close()
    routing.cancel()
    await asyncio.gather(routing, return_exceptions=True)


async def raw_status(served: Served, head: bytes) -> int:
    """The status line's code for a request written byte for byte (``head`` without the
    request line's path and the final blank line)."""
    port = int(served.url.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=served.trust, server_hostname="overlay.test"
    )
    writer.write(b"GET /tun HTTP/1.1\r\nHost: overlay.test\r\n" + head + b"\r\n")
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return int(line.split()[1])


UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Ovl-Device: dev1\r\n"
)


async def test_malformed_requests_are_counted_refusals_not_errors(served: Served) -> None:
    await served.node.store.enroll("dev1", None)
    protocol = b"Sec-WebSocket-Protocol: ovl.v1\r\n"
    not_ascii = "Authorization: Basic dmlw\u00e9\r\n".encode()
    assert await raw_status(served, UPGRADE + protocol + not_ascii) == 401
    assert (
        await raw_status(served, UPGRADE + "Sec-WebSocket-Protocol: ovl.v\u00b2\r\n".encode())
        == 400
    )
    huge = b"Sec-WebSocket-Protocol: ovl.v" + b"9" * 5000 + b"\r\n"
    assert await raw_status(served, UPGRADE + huge) == 426
    assert dict(served.node.refusals) == {"no-credentials": 1, "no-subprotocol": 1, "version": 1}


async def test_concurrent_guesses_from_one_address_are_not_all_checked(served: Served) -> None:
    await served.node.store.enroll("dev1", None)
    statuses = await asyncio.gather(
        *(status_of(served, headers(password=f"guess-{n}")) for n in range(60))
    )
    assert statuses.count(401) <= 3  # max_failures: the rest waited for none of them
    assert statuses.count(429) >= 57
    assert served.node.refusals["bad-credentials"] <= 3


async def test_a_device_is_not_locked_out_by_guesses_from_its_own_address(
    served: Served,
) -> None:
    await served.node.store.enroll("dev1", None)
    assert await status_of(served, headers()) == 101  # accepted once
    for _ in range(3):
        await status_of(served, headers("dev1", password="a-guess"))
    assert await status_of(served, headers("dev1", password="a-guess")) == 429  # locked out
    assert await status_of(served, headers()) == 101  # but not the device that logged in


async def test_a_device_gets_at_most_its_limit_of_vrfs(served: Served) -> None:
    await served.node.store.enroll("dev1", None, max_vrfs=2)
    for vrf, expected in (("a", 101), ("b", 101), ("c", 403), ("a", 101)):
        assert await status_of(served, {**headers(), wire.HEADER_VRF: vrf}) == expected, vrf
    assert served.node.refusals["vrf-limit"] == 1
    assert {lease.vrf for lease in served.node.store.all()} == {"a", "b"}


async def test_takeovers_of_one_tunnel_are_limited(served: Served) -> None:
    await served.node.store.enroll("dev1", None)
    async with aiohttp.ClientSession() as http:
        open_ = [await connect(served, http)]  # the first holds the tunnel
        for _ in range(3):  # three takeovers at once are fine (a device that moved)
            open_.append(await connect(served, http))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(served, http)
        assert refused.value.status == 429
        assert served.node.refusals["takeover-limit"] == 1
        for ws in open_:
            await ws.close()


async def test_no_refusal_tells_a_stranger_whether_a_device_is_enrolled(served: Served) -> None:
    """Before valid credentials, an unknown id, a wrong password and a missing client
    certificate are the same 401 with the same body; 403 only after valid credentials."""
    await served.node.store.enroll("dev1", None)
    await served.node.store.enroll("dev2", None, client_cert=True)

    async def answer(device: str, password: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                served.url.replace("wss://", "https://"),
                headers={
                    **headers(device, password),
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Protocol": wire.SUBPROTOCOL,
                },
                ssl=served.trust,
                server_hostname="overlay.test",
            ) as response,
        ):
            return response.status, await response.text()

    unknown = await answer("stranger", "wrong-password")
    assert unknown == await answer("dev1", "wrong-password")
    assert unknown[0] == 401
    assert await answer("dev2", PASSWORD) == unknown  # no client certificate: the same 401
    assert (await answer("stranger", PASSWORD))[0] == 403  # valid credentials, unknown id
