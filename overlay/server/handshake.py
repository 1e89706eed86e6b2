"""What a tunnel request must carry, checked without I/O.

Refusals happen before the WebSocket upgrade, as plain HTTP, so that any
client (curl included) can see why: 400 for missing or bad headers, 426 for a
protocol version this server does not speak, 401 for bad credentials. The
checks here need only the request headers; credentials and leases are checked
by the caller, which owns the slow and stateful parts.
"""

from __future__ import annotations

import base64
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
    return TunnelRequest(device, vrf, *credentials, offload=offload)


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
