"""A protocol v1 client without a TUN, for tests that need to misbehave on purpose.

    python -m tests.integration.rawclient URL CA_FILE PASSWORD DEVICE ACTION [ARG]

Prints one JSON object describing what happened. ACTION is one of:
``hello`` (print the hello), ``oversize N`` (send an N-byte binary message),
``garbage`` (send a frame that is not IP, then prove the tunnel is still up),
``takeover`` (open a second session of the same device; report how the first ended).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from typing import Any

import aiohttp

from overlay import wire


async def open_tunnel(
    http: aiohttp.ClientSession, url: str, context: ssl.SSLContext, password: str, device: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    ws = await http.ws_connect(
        url,
        protocols=(wire.SUBPROTOCOL,),
        ssl=context,
        auth=aiohttp.BasicAuth("VPN", password),
        autoping=True,
        headers={wire.HEADER_DEVICE: device, wire.HEADER_VRF: "default"},
    )
    hello = json.loads((await ws.receive(timeout=10)).data)
    return ws, hello


async def main(
    url: str, ca_file: str, password: str, device: str, action: str, arg: str | None
) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ca_file)
    async with aiohttp.ClientSession() as http:
        ws, hello = await open_tunnel(http, url, context, password, device)
        if action == "hello":
            return hello
        if action == "oversize":
            await ws.send_bytes(b"\x45" + b"\x00" * (int(arg or 0) - 1))
            message = await ws.receive(timeout=10)
            return {"type": message.type.name, "code": message.data}
        if action == "garbage":
            await ws.send_bytes(b"\x00" * 30)
            await ws.send_str("not a frame")
            await ws.ping()
            await asyncio.sleep(0.5)
            return {"closed": ws.closed}
        if action == "takeover":
            second, again = await open_tunnel(http, url, context, password, device)
            message = await ws.receive(timeout=10)
            result = {
                "first": message.type.name,
                "code": message.data,
                "same_address": again["address"] == hello["address"],
            }
            await second.close()
            return result
    raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    url, ca_file, password, device, action = sys.argv[1:6]
    arg = sys.argv[6] if len(sys.argv) > 6 else None
    print(json.dumps(asyncio.run(main(url, ca_file, password, device, action, arg))))
