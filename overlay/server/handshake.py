"""What a tunnel request must carry, checked without I/O.

Refusals happen before the WebSocket upgrade, as plain HTTP, so that any
client (curl included) can see why: 400 for missing or bad headers, 426 for a
protocol version this server does not speak, 401 for bad credentials. The
checks here need only the request headers; credentials and leases are checked
by the caller, which owns the slow and stateful parts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from overlay import wire


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP refusal: the status, a counter key, and a one-line message for the device."""

    status: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    device: str
    vrf: str
    username: str
    password: str
    offload: bool = False  # the device asked for segmentation offload
    key: str = ""  # Sec-WebSocket-Key, which the 101 answers


# RFC 6455, section 1.3: what the server appends to the client's key to accept it.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WEBSOCKET_VERSION = "13"


def check_request(headers: Mapping[str, str]) -> TunnelRequest | Refusal:
    """Check the headers of a tunnel request (``headers`` must be case-insensitive)."""
    if headers.get("Upgrade", "").lower() != "websocket":
        return Refusal(400, "not-websocket", "this endpoint takes a WebSocket upgrade")
    protocols = [
        p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    version = wire.offered_version(protocols)
    if version is None:
        return Refusal(400, "no-subprotocol", f"missing Sec-WebSocket-Protocol: {wire.SUBPROTOCOL}")
    if wire.SUBPROTOCOL not in protocols:
        return Refusal(
            426,
            "version",
            f"protocol {protocols} not supported; this server speaks {wire.SUBPROTOCOL}",
        )
    key = headers.get("Sec-WebSocket-Key", "")
    if (
        "upgrade" not in headers.get("Connection", "").lower()
        or headers.get("Sec-WebSocket-Version", "") != WEBSOCKET_VERSION
        or not _is_key(key)
    ):
        return Refusal(
            400,
            "bad-websocket",
            "a WebSocket upgrade needs Connection: Upgrade, Sec-WebSocket-Version: 13 "
            "and a Sec-WebSocket-Key",
        )
    device = headers.get(wire.HEADER_DEVICE, "")
    if not wire.NAME.fullmatch(device):
        return Refusal(
            400,
            "bad-device",
            f"missing or malformed {wire.HEADER_DEVICE} header (1-64 of A-Z a-z 0-9 . _ : -)",
        )
    vrf = headers.get(wire.HEADER_VRF, wire.DEFAULT_VRF)
    if not wire.NAME.fullmatch(vrf):
        return Refusal(
            400, "bad-vrf", f"malformed {wire.HEADER_VRF} header (1-64 of A-Z a-z 0-9 . _ : -)"
        )
    credentials = parse_basic(headers.get("Authorization", ""))
    if credentials is None:
        return Refusal(401, "no-credentials", "missing or malformed Basic Authorization")
    offload = headers.get(wire.HEADER_OFFLOAD, "").strip().lower() == wire.OFFLOAD_VNET
    return TunnelRequest(device, vrf, *credentials, offload=offload, key=key)


def _is_key(key: str) -> bool:
    """A Sec-WebSocket-Key: 16 bytes in base64 (RFC 6455, section 4.1)."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def switching_protocols(key: str, headers: Mapping[str, str]) -> bytes:
    """The 101 that accepts a checked request's upgrade, with ``headers`` added."""
    accept = base64.b64encode(hashlib.sha1(key.encode() + ACCEPT_GUID).digest()).decode()
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
        f"Sec-WebSocket-Protocol: {wire.SUBPROTOCOL}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_basic(value: str) -> tuple[str, str] | None:
    """Parse ``Basic base64(user:password)`` (RFC 7617); None when it is not that."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, non-ASCII input, or not UTF-8
        return None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        return None
    return username, password
