"""The node's look at BIRD's control socket, against a stand-in on a real Unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from overlay.server.birdwatch import BirdWatch, bird_answers


async def serve(path: Path, greeting: bytes) -> asyncio.AbstractServer:
    async def greet(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(greet, str(path))


async def test_bird_answers_only_with_its_greeting(tmp_path: Path) -> None:
    socket = tmp_path / "bird.ctl"
    assert not await bird_answers(socket)  # nothing there
    server = await serve(socket, b"0001 BIRD 2.0.12 ready.\n")
    assert await bird_answers(socket)
    server.close()
    await server.wait_closed()
    other = tmp_path / "other.ctl"
    server = await serve(other, b"hello\n")
    assert not await bird_answers(other)
    server.close()
    await server.wait_closed()


def test_each_change_is_logged_once(capsys: pytest.CaptureFixture[str]) -> None:
    watch = BirdWatch(Path("/run/bird/bird.ctl"))
    for up in (False, False, True, True, False):
        watch.saw(up)
    out = capsys.readouterr().out
    assert out.count("BIRD does not answer") == 2 and out.count("BIRD answers") == 1
    assert watch.up is False
