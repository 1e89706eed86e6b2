"""Many simulated devices speaking protocol v1, without a TUN each: for reconnect storms.

    python -m lab.loadgen --url URL --ca CA --password-file F --devices N [--prefix SIM]

Each simulated device connects, reads its hello, keeps the tunnel open
(answering pings), and when the tunnel ends reconnects as the real agent does:
at once after 1001, else after a jittered backoff (``appliance.failover``). The
program prints one JSON line per milestone on stdout:

    {"event": "up", "devices": N, "seconds": …}          all N connected the first time
    {"event": "down", "devices": K}                      K tunnels lost (after a restart)
    {"event": "back", "devices": N, "seconds": …, "same_addresses": true, "attempts": …}

and runs until SIGTERM. Everything it connects to must be in a namespace the
caller made (the bench runs it inside one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import time
from pathlib import Path

import aiohttp

from appliance.failover import After, after_close, backoff
from overlay import wire
from overlay.process import raise_file_limit


class Fleet:
    """The simulated devices and what they have seen."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.password = Path(args.password_file).read_text().strip()
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

    async def device(self, http: aiohttp.ClientSession, index: int) -> None:
        name = f"{self.args.prefix}-{index:05d}"
        delays = backoff(self.args.min_delay, self.args.max_delay)
        while True:
            code: int | None = None
            try:
                async with self.gate:
                    self.attempts += 1
                    ws = await http.ws_connect(
                        self.args.url,
                        protocols=(wire.SUBPROTOCOL,),
                        ssl=self.tls,
                        auth=aiohttp.BasicAuth("VPN", self.password),
                        compress=0,
                        headers={wire.HEADER_DEVICE: name, wire.HEADER_VRF: "default"},
                    )
                    hello = wire.Hello.parse((await ws.receive(timeout=10)).data)
                self.arrived(index, hello.address)
                delays = backoff(self.args.min_delay, self.args.max_delay)
                async for _ in ws:
                    pass  # data frames are ignored; pings are answered by aiohttp
                code = ws.close_code
            except (aiohttp.ClientError, OSError, TimeoutError, wire.HelloError, TypeError):
                pass
            self.left(index)
            if after_close(code) is not After.AT_ONCE:
                await asyncio.sleep(next(delays))

    def arrived(self, index: int, address: str) -> None:
        if self.first.setdefault(index, address) != address:
            self.mismatched += 1
        self.connected.add(index)
        count = len(self.connected)
        if count == self.args.devices:
            if self.lost_at is None:
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
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks = [asyncio.create_task(fleet.device(http, n)) for n in range(args.devices)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lab.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--prefix", default="SIM")
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
