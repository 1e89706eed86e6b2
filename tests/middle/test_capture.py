"""A capture's tap is bounded in bytes: a reader that stalls costs drops, not memory; a
reader that goes away ends it."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from overlay import control, pcap
from overlay.server.capture import QUEUE_BYTES, Tap, capture_handler
from overlay.server.node import Node
from tests.middle.conftest import wait_until


async def test_a_stalled_capture_keeps_at_most_its_bound_and_counts_the_rest() -> None:
    tap = Tap(None)
    segment = bytes(65536)
    for _ in range(1000):  # 64 MiB offered, nobody reading
        tap.offer(b"\xa9\xfe\x01\x01", segment)
    assert tap.size <= QUEUE_BYTES
    assert tap.dropped == 1000 - QUEUE_BYTES // len(segment)
    await tap.get()
    assert tap.size == QUEUE_BYTES - len(segment)  # room again for one more


async def test_a_quiet_capture_ends_when_its_reader_goes_away(node: Node, tmp_path: Path) -> None:
    """Nothing to write, so no write fails: the capture must still notice, or a forgotten
    ``overlay capture`` holds the tap, and the server's shutdown, for ever."""
    path = tmp_path / "control.sock"
    runner = await control.start(
        path, node.status, streams={"capture": capture_handler(node.router, node.store)}
    )
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session,
            session.get("http://local/capture") as response,
        ):
            await response.content.readexactly(pcap.FILE_HEADER_BYTES)
            assert len(node.router._taps) == 1
        await wait_until(lambda: not node.router._taps, timeout=5)
    finally:
        await runner.cleanup()
