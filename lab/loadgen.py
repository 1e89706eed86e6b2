"""Many simulated devices speaking protocol v1, without a TUN each: for reconnect storms.

    python -m lab.loadgen --url URL [--url URL2 …] --ca CA --password-file F --devices N
                          [--prefix SIM] [--first K] [--addresses FILE] [--once]

Each simulated device connects, reads its hello, keeps the tunnel open
(answering pings), and when the tunnel ends reconnects as the real agent does:
at once after 1001, else after a jittered backoff (``appliance.failover``);
with several URLs it tries them in the agent's order (the one that accepted it
last first, then the others) before it backs off. The
program prints one JSON line per milestone on stdout:

    {"event": "up", "devices": N, "seconds": …}          all N connected the first time
    {"event": "down", "devices": K}                      K tunnels lost (after a restart)
    {"event": "back", "devices": N, "seconds": …, "same_addresses": true, "attempts": …}

and runs until SIGTERM. Devices are named PREFIX-NNNNN from K (default 0); with
``--addresses``, the address each device got first is written to FILE (JSON) at
"up". With ``--once``, each device closes its tunnel after the hello and the
program ends once all have had one. Two generators with overlapping ranges make
devices that reach two nodes of a fleet at once. Everything it connects to must
be in a namespace the caller made (the bench runs it inside one).

The devices speak the WebSocket handshake and frames themselves (:class:`Tunnel`)
rather than through aiohttp's client: the generator shares the server's two
cores, and aiohttp's client cost more CPU per device (about 2 ms) than the
server's side of the same handshake, so the storm measured the generator. The
TLS is the same: the server's certificate is verified, and the hello is parsed
and checked by :mod:`overlay.wire`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import json
import os
import signal
import ssl
import time
from pathlib import Path
from typing import cast
from urllib.parse import SplitResult, urlsplit

import aiohttp

from appliance.failover import After, ServerOrder, after_close, backoff
from overlay import wire
from overlay.exceptions import HelloError
from overlay.process import raise_file_limit

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class UpgradeError(Exception):
    """The server did not switch to a WebSocket (a refusal, or a broken response)."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked frame with a short payload (control frames: at most 125 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def take_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """Take one whole server frame (unmasked) off ``buffer``: its opcode and payload."""
    if len(buffer) < 2:
        return None
    length, offset = buffer[1] & 0x7F, 2
    if length == 126:
        offset = 4
        length = int.from_bytes(buffer[2:4]) if len(buffer) >= 4 else -1
    elif length == 127:
        offset = 10
        length = int.from_bytes(buffer[2:10]) if len(buffer) >= 10 else -1
    if length < 0 or len(buffer) < offset + length:
        return None
    opcode, payload = buffer[0] & 0x0F, bytes(buffer[offset : offset + length])
    del buffer[: offset + length]
    return opcode, payload


class Tunnel(asyncio.Protocol):
    """One device's connection: the upgrade request, the hello, then pongs until closed."""

    def __init__(self, request: bytes, accept: bytes) -> None:
        self.request = request
        self.accept = accept  # the Sec-WebSocket-Accept the server must answer with
        self.buffer = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[wire.Hello] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()  # the close code

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[: end + 4]
            if (
                not head.startswith(b"http/1.1 101 ")
                or b"\r\nsec-websocket-accept: " + (self.accept.lower()) not in head
            ):
                self._fail(UpgradeError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
                return
            self.upgraded = True
        while (frame := take_frame(self.buffer)) is not None:
            opcode, payload = frame
            if opcode == TEXT and not self.hello.done():
                try:
                    self.hello.set_result(wire.Hello.parse(payload.decode()))
                except (HelloError, UnicodeDecodeError) as exc:
                    self._fail(exc)
            elif opcode == PING:
                self.transport.write(client_frame(PONG, payload))
            elif opcode == CLOSE:
                self.transport.write(client_frame(CLOSE, payload[:2]))
                self.transport.close()
                self._end(int.from_bytes(payload[:2]) if len(payload) >= 2 else None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionResetError("connection lost"))

    def _fail(self, exc: Exception) -> None:
        if not self.hello.done():
            self.hello.set_exception(exc)
        self.transport.close()
        self._end(None)

    def _end(self, code: int | None) -> None:
        if not self.closed.done():
            self.closed.set_result(code)


class Fleet:
    """The simulated devices and what they have seen."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.urls = args.url
        password = Path(args.password_file).read_text().strip()
        self.authorization = aiohttp.BasicAuth("VPN", password).encode()
        self.tls = ssl.create_default_context(cafile=args.ca)
        self.first: dict[int, str] = {}  # device -> address of its first hello
        self.connected: set[int] = set()
        self.mismatched = 0
        self.attempts = 0
        self.lost_at: float | None = None
        self.started = time.monotonic()
        self.gate = asyncio.Semaphore(args.concurrency)

    def say(self, event: str, **data: object) -> None:
        print(json.dumps({"event": event, **data}), flush=True)

    def request(self, name: str, url: SplitResult) -> tuple[bytes, bytes]:
        """A device's upgrade request, and the Sec-WebSocket-Accept that answers it."""
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {url.path or '/'} HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {wire.SUBPROTOCOL}\r\n"
            f"Authorization: {self.authorization}\r\n"
            f"{wire.HEADER_DEVICE}: {name}\r\n"
            f"{wire.HEADER_VRF}: {wire.DEFAULT_VRF}\r\n"
            "\r\n"
        )
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest())
        return request.encode(), accept

    async def device(self, index: int) -> None:
        name = f"{self.args.prefix}-{index:05d}"
        order = ServerOrder(self.urls)
        delays = backoff(self.args.min_delay, self.args.max_delay)
        while True:
            code: int | None = None
            for url in order.round():
                tunnel = await self.connect(name, urlsplit(url))
                if tunnel is not None:
                    order.connected(url)
                    break
            if tunnel is not None:
                self.arrived(index, await tunnel.hello)
                if self.args.once:
                    tunnel.transport.close()
                    return
                delays = backoff(self.args.min_delay, self.args.max_delay)
                code = await tunnel.closed
            self.left(index)
            if after_close(code) is not After.AT_ONCE:
                await asyncio.sleep(next(delays))

    async def connect(self, name: str, url: SplitResult) -> Tunnel | None:
        """One attempt at ``url``: the tunnel once its hello came, or None."""
        loop = asyncio.get_running_loop()
        tunnel: Tunnel | None = None
        try:
            async with self.gate:
                self.attempts += 1
                request, accept = self.request(name, url)
                _, tunnel = await loop.create_connection(
                    functools.partial(Tunnel, request, accept),
                    url.hostname,
                    url.port or 443,
                    ssl=self.tls,
                )
                await asyncio.wait_for(tunnel.hello, 10)
            return tunnel
        except (OSError, TimeoutError, HelloError, UpgradeError):
            if tunnel is not None:
                tunnel.transport.close()
            return None

    def arrived(self, index: int, hello: wire.Hello) -> None:
        address = hello.address
        if self.first.setdefault(index, address) != address:
            self.mismatched += 1
        self.connected.add(index)
        count = len(self.connected)
        if count == self.args.devices:
            if self.lost_at is None:
                if self.args.addresses:
                    names = {f"{self.args.prefix}-{i:05d}": a for i, a in self.first.items()}
                    Path(self.args.addresses).write_text(json.dumps(names))
                self.say(
                    "up",
                    devices=count,
                    seconds=round(time.monotonic() - self.started, 3),
                    attempts=self.attempts,
                )
            else:
                self.say(
                    "back",
                    devices=count,
                    seconds=round(time.monotonic() - self.lost_at, 3),
                    same_addresses=self.mismatched == 0,
                    attempts=self.attempts,
                )
                self.lost_at = None

    def left(self, index: int) -> None:
        if index in self.connected:
            self.connected.discard(index)
            if self.lost_at is None:
                self.lost_at = time.monotonic()
                self.attempts = 0
                asyncio.get_running_loop().call_later(1, self._report_down)

    def _report_down(self) -> None:
        self.say("down", devices=self.args.devices - len(self.connected))


async def main(args: argparse.Namespace) -> None:
    fleet = Fleet(args)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    first = args.first
    tasks = [asyncio.create_task(fleet.device(n)) for n in range(first, first + args.devices)]
    stopped = asyncio.create_task(stop.wait())
    if args.once:  # done when every device has had its hello
        await asyncio.wait([stopped, asyncio.gather(*tasks)], return_when="FIRST_COMPLETED")
    else:
        await stopped
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lab.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True, action="append", help="repeat for a fleet")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--prefix", default="SIM")
    parser.add_argument("--first", type=int, default=0, help="number of the first device")
    parser.add_argument("--addresses", help="write each device's first address here at up")
    parser.add_argument(
        "--once", action="store_true", help="close each tunnel after its hello; end after all"
    )
    parser.add_argument("--concurrency", type=int, default=256, help="handshakes under way at once")
    parser.add_argument("--min-delay", type=float, default=1.0)
    parser.add_argument("--max-delay", type=float, default=60.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise_file_limit()
    arguments = parse()
    try:
        import uvloop

        uvloop.run(main(arguments))
    except ImportError:
        asyncio.run(main(arguments))
