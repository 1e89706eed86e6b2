"""The workers' relay: a tunnel one worker opens, and a failed login, reach the others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from overlay.server import relay
from overlay.server.fleet import Tunnel
from overlay.server.relay import Hub, Relay
from tests.middle.conftest import wait_until


async def test_a_claim_reaches_every_other_worker_and_not_its_sender(tmp_path: Path) -> None:
    path = tmp_path / "relay.sock"
    server = await Hub().start(path)
    heard: dict[str, list[tuple[str, str, str, float]]] = {"w1": [], "w2": [], "w3": []}
    relays = [
        Relay(
            path,
            f"srv-{name}",
            lambda *claim, name=name: heard[name].append(claim),
            lambda source, name=name: heard[name].append(("failed", source)),
        )
        for name in heard
    ]
    for each in relays:
        each.start()
    try:
        await wait_until(lambda: all(r._writer is not None for r in relays))
        await asyncio.sleep(0.05)  # the hub has taken every connection in
        relays[0].claim(Tunnel("SN-1", "main-vrf", "session-1", 1700000000.5))
        relays[0].claim(Tunnel("SN-2", "voice", "session-2", 1700000000.75))  # one write
        relays[0].failed("198.18.0.66")
        await wait_until(lambda: len(heard["w2"]) == 3 and len(heard["w3"]) == 3)
        assert heard["w2"] == [
            ("SN-1", "main-vrf", "srv-w1", 1700000000.5),
            ("SN-2", "voice", "srv-w1", 1700000000.75),
            ("failed", "198.18.0.66"),
        ]
        assert heard["w3"] == heard["w2"]
        await asyncio.sleep(0.05)
        assert heard["w1"] == []
    finally:
        for each in relays:
            await each.close()
        server.close()


async def test_a_worker_connects_again_when_the_relay_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "relay.sock"
    heard: list[tuple[str, str, str, float]] = []
    first, second = (
        Relay(path, "srv-w1", lambda *c: None, lambda s: None),
        Relay(path, "srv-w2", lambda *c: heard.append(c), lambda s: None),
    )
    first.start()
    second.start()  # nothing listens yet: they try again each second
    server = await Hub().start(path)
    try:
        await wait_until(lambda: first._writer is not None and second._writer is not None)
        await asyncio.sleep(0.05)
        first.claim(Tunnel("SN-2", "default", "session-2", 1700000001.0))
        await wait_until(lambda: heard)
        assert heard == [("SN-2", "default", "srv-w1", 1700000001.0)]
    finally:
        await first.close()
        await second.close()
        server.close()


async def test_lines_to_a_worker_that_stopped_reading_are_dropped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stuck worker must not grow the supervisor without bound."""
    monkeypatch.setattr(relay, "MAX_BACKLOG", -1)  # whatever it owes is too much
    path = tmp_path / "relay.sock"
    hub = Hub()
    server = await hub.start(path)
    heard: list[tuple[str, str, str, float]] = []
    first = Relay(path, "srv-w1", lambda *c: None, lambda s: None)
    second = Relay(path, "srv-w2", lambda *c: heard.append(c), lambda s: None)
    first.start()
    second.start()
    try:
        await wait_until(lambda: first._writer is not None and second._writer is not None)
        await asyncio.sleep(0.05)
        first.claim(Tunnel("SN-1", "default", "session-1", 1700000000.0))
        await wait_until(lambda: hub.dropped == 1)
        await asyncio.sleep(0.05)
        assert heard == []
    finally:
        await first.close()
        await second.close()
        server.close()
