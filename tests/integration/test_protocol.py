"""Protocol v1 as seen on the wire by a client that breaks the rules on purpose."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import PASSWORD, URL, Overlay, make_overlay

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, Path]) -> Iterator[Overlay]:
    for overlay in make_overlay(tmp_path_factory.mktemp("protocol"), pki):
        overlay.start_server()
        overlay.add_device("raw")
        yield overlay


def raw(overlay: Overlay, device: str, action: str, *args: str) -> dict:
    result = overlay.python(
        "ovlt-raw",
        "tests.integration.rawclient",
        URL,
        str(overlay.ca_file),
        PASSWORD,
        device,
        action,
        *args,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def session_of(overlay: Overlay, device: str) -> dict | None:
    sessions = overlay.server_status()["sessions"]
    return next((s for s in sessions if s["device"] == device), None)


def test_hello_is_the_documented_message(server: Overlay) -> None:
    hello = raw(server, "SN-HELLO", "hello")
    assert set(hello) == {
        "type",
        "version",
        "address",
        "prefix",
        "server",
        "mtu",
        "ping_interval",
        "max_message",
        "session",
        "offload",
    }
    assert (hello["type"], hello["version"], hello["prefix"], hello["server"]) == (
        "hello",
        1,
        16,
        "169.254.0.1",
    )
    assert (hello["mtu"], hello["ping_interval"], hello["max_message"]) == (1400, 60, 262144)
    assert hello["offload"] is False  # this client did not ask for it


def test_a_message_over_max_message_is_closed_with_1009(server: Overlay) -> None:
    assert raw(server, "SN-BIG", "oversize", str(262144 + 1)) == {"type": "CLOSE", "code": 1009}


def test_garbage_is_counted_and_the_tunnel_stays_up(server: Overlay) -> None:
    assert raw(server, "SN-GARBAGE", "garbage") == {"closed": False}
    drops = server.server_status()["drops"]
    assert drops.get("malformed", 0) >= 1
    assert drops.get("unsupported", 0) >= 1


def test_a_newer_session_takes_over_with_4001(server: Overlay) -> None:
    result = raw(server, "SN-TWICE", "takeover")
    assert result == {"first": "CLOSE", "code": 4001, "same_address": True}
