"""The middle floor: the router, the sender, the endpoint and the admin API in memory, with a
fake TUN (tests/faketun.py) and loopback sockets. No root, no namespaces, seconds."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from overlay import certs
from overlay.bridge import Sender
from overlay.codel import Codel
from overlay.counters import Counters
from overlay.server.auth import hash_password
from overlay.server.config import ServerConfig, load_server_config
from overlay.server.node import Node
from overlay.server.router import TURN_PACKETS
from overlay.server.rulebook import Rulebook
from overlay.server.store import open_store
from overlay.status import CertificateStatus
from tests.faketun import FakeTun

PASSWORD = "middle-floor-pass"


async def wait_until(condition: object, timeout: float = 5) -> None:
    """Let the loop run until ``condition()`` holds; fail after ``timeout`` seconds."""
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class RecordingSocket:
    """A WebSocket stand-in for :class:`Sender`: records frames; ``stall()`` makes every
    send wait until ``resume()``, as a device that stopped reading would."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.sent = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()

    def stall(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        await self._open.wait()
        self.frames.append(data)
        self.sent.set()


@dataclass(eq=False)
class FakeSession:
    """What the router needs of a session (overlay.server.router.Routed), and no more."""

    device: str
    address: str
    queue_bytes: int = 65536
    max_message: int = 65536
    offload: bool = False
    counters: Counters = field(default_factory=Counters)
    sender: Sender = field(init=False)
    turn_budget: int = TURN_PACKETS

    def __post_init__(self) -> None:
        self.sender = Sender(self.queue_bytes, self.max_message, self.counters, Codel())

    def flush(self) -> None:
        """Nothing: these tests send with ``sender.run``."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.device, "default")

    @property
    def address_bytes(self) -> bytes:
        return ipaddress.IPv4Address(self.address).packed


@pytest.fixture
def tun() -> Iterator[FakeTun]:
    fake = FakeTun()
    yield fake
    fake.close()


def write_config(directory: Path, extra: str = "", pool: str = "169.254.1.1-169.254.1.20") -> Path:
    """A server.toml for a node in ``directory``, with a fresh certificate for overlay.test."""
    certs.init(directory, ["overlay.test"])
    path = directory / "server.toml"
    path.write_text(
        f"""
[listen]
host = "127.0.0.1"
port = 1
cert_file = "{certs.CERT_FILE}"
key_file = "{certs.KEY_FILE}"

[overlay]
pool = "{pool}"

[auth]
password_hash = "{hash_password(PASSWORD, log_n=10)}"
max_failures = 3

[state]
dir = "state"

[node]
name = "node-a"

[qoe]
enabled = false
{extra}
"""
    )
    return path


@pytest.fixture
async def node(tmp_path: Path, tun: FakeTun) -> AsyncIterator[Node]:
    """A node with real SQLite stores in ``tmp_path`` and the fake TUN."""
    made = await make_node(load_server_config(write_config(tmp_path)), tun)
    yield made
    await made.store.close()


async def make_node(
    config: ServerConfig,
    tun: FakeTun,
    certificate: Callable[[], CertificateStatus] | None = None,
) -> Node:
    return Node(
        config,
        await open_store(config),
        tun,
        None,
        Rulebook(config.firewall, config.rules_file),
        certificate,
    )
