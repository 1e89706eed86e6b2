"""A protocol v1 client without a TUN: opens a session for a device id and prints the hello.

    python -m tests.integration.rawclient URL CA_FILE PASSWORD DEVICE

The resilience tests use it to take a device's session from elsewhere (4001). What the
endpoint does with misbehaving clients is tested in memory: tests/middle/test_endpoint.py.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from typing import Any

import aiohttp

from overlay import wire


async def main(url: str, ca_file: str, password: str, device: str) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=ca_file)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            url,
            protocols=(wire.SUBPROTOCOL,),
            ssl=context,
            headers={
                wire.HEADER_DEVICE: device,
                wire.HEADER_VRF: "default",
                "Authorization": aiohttp.encode_basic_auth("VPN", password),
            },
        ) as ws,
    ):
        hello: dict[str, Any] = json.loads((await ws.receive(timeout=10)).data)
        return hello


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
