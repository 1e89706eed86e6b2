"""The QoE collector over loopback with a real store: reports share a group commit, and a
store that cannot write is answered and counted, never an exception that escapes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overlay.server.qoe import Collector, ReportStore
from overlay.server.sqlite import GroupCommit


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[tuple[Collector, int]]:
    store = ReportStore(tmp_path / "qoe.sqlite", batch=GroupCommit())
    collector = Collector(store, lambda address: ("dev1", "default"))
    server = await asyncio.start_server(collector.handle, "127.0.0.1", 0)
    yield collector, server.sockets[0].getsockname()[1]
    server.close()
    assert store.batch is not None
    store.batch.flush()
    store.close()


async def send(port: int, lines: list[bytes]) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(line + b"\n" for line in lines))
    answers = []
    while line := await asyncio.wait_for(reader.readline(), 5):
        answers.append(json.loads(line))
        if len(answers) == len(lines):
            break
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


async def test_a_store_that_cannot_write_is_answered_and_counted(
    collector: tuple[Collector, int],
) -> None:
    counted, port = collector
    counted.store._db.execute("DROP TABLE reports")
    answers = await send(port, [b'{"mos": 4.1}'])
    assert answers == [{"error": "the server cannot store reports now"}]
    assert counted.counters["store-error"] == 1
