"""Drive headless Chromium over the DevTools protocol: load the status page, watch it update.

    python -m tests.integration.browser URL SIGNAL_FILE SCREENSHOT

Prints ``first <rows>`` once every tunnel shows up, then waits for SIGNAL_FILE
to exist (the test stops a device meanwhile), then prints ``then <rows>`` once
the *same* page, refreshing itself, shows a device down, and saves a
screenshot at desktop width and one at phone width (``NAME-phone.png``).
Rows are [device, state] pairs read from the page's table.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROWS = (
    "JSON.stringify([...document.querySelectorAll('#devices tr')]"
    ".map(r => [r.dataset.device, r.dataset.state]))"
)


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        await self.ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = json.loads((await self.ws.receive(timeout=30)).data)
            if message.get("id") == number:
                return message.get("result", {})

    async def rows(self) -> list[list[str]]:
        result = await self.call("Runtime.evaluate", expression=ROWS, returnByValue=True)
        return json.loads(result["result"]["value"])

    async def wait_rows(self, done: Any, timeout: float = 20) -> list[list[str]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.rows()
            if done(rows) or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.3)


async def main(url: str, signal: Path, screenshot: Path) -> None:
    profile = tempfile.mkdtemp(prefix="ovl-chromium-")
    chromium = subprocess.Popen(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            "--window-size=1000,360",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"TMPDIR": profile},  # its own temporary files go with the profile
    )
    try:
        active = Path(profile) / "DevToolsActivePort"
        for _ in range(200):
            if active.exists() and active.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = active.read_text().split()[0]
        async with aiohttp.ClientSession() as http:
            targets = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            target = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                await page.call("Page.navigate", url=url)
                first = await page.wait_rows(
                    lambda rows: len(rows) >= 2 and all(state == "up" for _, state in rows)
                )
                print("first", json.dumps(first), flush=True)
                while not signal.exists():
                    await asyncio.sleep(0.1)
                then = await page.wait_rows(lambda rows: any(s == "down" for _, s in rows))
                print("then", json.dumps(then), flush=True)
                shot = await page.call("Page.captureScreenshot", format="png")
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                await page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=390,
                    height=640,
                    deviceScaleFactor=1,
                    mobile=True,
                )
                await asyncio.sleep(0.5)
                shot = await page.call("Page.captureScreenshot", format="png")
                phone = screenshot.with_name(screenshot.stem + "-phone.png")
                phone.write_bytes(base64.b64decode(shot["data"]))
    finally:
        chromium.terminate()
        chromium.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
