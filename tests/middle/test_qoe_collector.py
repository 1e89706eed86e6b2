"""The QoE collector over loopback with a real store written by its own thread: reports
answered once committed, quotas per device, and a store that cannot write answered and
counted, never an exception that escapes."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overlay.server.qoe import Collector, Quota, ReportStore, ReportWriter


async def start(path: Path, quota: Quota) -> tuple[Collector, asyncio.Server, ReportWriter]:
    writer = ReportWriter(path)
    await writer.open()

    async def owner(address: ipaddress.IPv4Address) -> tuple[str, str]:
        return ("dev1", "default")

    collector = Collector(writer, owner, quota)
    return collector, await asyncio.start_server(collector.handle, "127.0.0.1", 0), writer


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[tuple[Collector, int]]:
    collector, server, writer = await start(tmp_path / "qoe.sqlite", Quota(rate=1, burst=3))
    yield collector, server.sockets[0].getsockname()[1]
    server.close()
    await writer.close()


async def send(port: int, lines: list[bytes]) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(line + b"\n" for line in lines))
    answers = [json.loads(await asyncio.wait_for(reader.readline(), 5)) for _ in lines]
    writer.close()
    return answers


async def test_reports_are_answered_once_committed(
    collector: tuple[Collector, int], tmp_path: Path
) -> None:
    counted, port = collector
    answers = await send(port, [b'{"mos": 4.1}', b"not json", b'{"mos": 3.9}'])
    assert [next(iter(a)) for a in answers] == ["stored", "error", "stored"]
    committed = sqlite3.connect(tmp_path / "qoe.sqlite").execute("SELECT count(*) FROM reports")
    assert committed.fetchone() == (2,)  # read by another connection: durable
    assert dict(counted.counters) == {"stored": 2, "rejected": 1}


async def test_a_device_stores_at_most_its_quota(collector: tuple[Collector, int]) -> None:
    counted, port = collector
    answers = await send(port, [b'{"n": %d}' % n for n in range(6)])
    assert [next(iter(a)) for a in answers] == ["stored"] * 3 + ["error"] * 3
    assert "over quota" in str(answers[-1]["error"])
    assert counted.counters["over-quota"] == 3


async def test_a_store_that_cannot_write_is_answered_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "qoe.sqlite"
    collector, server, writer = await start(path, Quota())
    sqlite3.connect(path).execute("DROP TABLE reports")  # as a full disk would fail it
    answers = await send(server.sockets[0].getsockname()[1], [b'{"mos": 4.1}'])
    assert answers == [{"error": "the server cannot store reports now"}]
    assert collector.counters["store-error"] == 1
    server.close()
    await writer.close()


def test_retention_keeps_the_recent_and_the_newest(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "qoe.sqlite")
    now = time.time()
    old = [(now - 40 * 86400, "dev1", "default", "169.254.1.1", "{}")] * 3
    new = [(now, "dev1", "default", "169.254.1.1", json.dumps({"n": n})) for n in range(5)]
    store.add_many(old + new)
    assert store.prune(now - 30 * 86400, keep=4) == 3 + 1
    assert [r.report for r in store.list()] == [{"n": n} for n in range(1, 5)]
    store.close()
