"""Wire protocol v1, without I/O: handshake names, the hello message, close codes, frames.

A tunnel is a WebSocket (RFC 6455) on path ``/tun``. The server's first message is
one text frame holding the :class:`Hello`; after it, every binary frame carries
one or more whole IPv4/IPv6 packets back to back (with offload, each behind its
10-byte virtio-net header). IP headers are self-delimiting, so a frame needs no
framing of its own: :func:`split_packets` walks it by the length fields and
refuses a frame that does not split exactly. docs/protocol.md
is the normative description; this module is its implementation.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, fields

from overlay.exceptions import FrameError, HelloError
from overlay.packet import PacketError, packet_length

VERSION = 1
SUBPROTOCOL = "ovl.v1"
SUBPROTOCOL_PREFIX = "ovl.v"
DEFAULT_PATH = "/tun"
DEFAULT_VRF = "default"

# Device ids (serial numbers, host names) and VRF names, as sent in the headers below.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

HEADER_DEVICE = "X-Ovl-Device"
HEADER_VRF = "X-Ovl-Vrf"
# A device that can take segmentation offload asks for it with this header and
# value; the server grants it in the hello (docs/protocol.md, "Offload").
HEADER_OFFLOAD = "X-Ovl-Offload"
OFFLOAD_VNET = "vnet"

DEFAULT_MTU = 1400
DEFAULT_PING_INTERVAL = 60
DEFAULT_MAX_MESSAGE = 262144

_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


class CloseCode(enum.IntEnum):
    """WebSocket close codes and what they tell the device to do."""

    NORMAL = 1000  # orderly end; reconnect with the usual backoff
    GOING_AWAY = 1001  # the server shuts down or restarts; reconnect at once
    PROTOCOL_ERROR = 1002  # the peer sent what is not WebSocket
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    REPLACED = 4001  # a newer session of the same (device, VRF) took over
    REMOVED = 4003  # the device was removed or unbound on the server


class Opcode(enum.IntEnum):
    """WebSocket frame opcodes (RFC 6455, section 5.2) the server writes."""

    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


def frame_header(opcode: Opcode, length: int) -> bytes:
    """The header of a whole, unmasked frame of ``length`` bytes: a server's frame."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's payload: the code, then the reason cut to fit a control frame."""
    return struct.pack("!H", code) + reason.encode()[:123]


@dataclass(frozen=True, slots=True)
class Hello:
    """The server's first message: the device's lease and the session's parameters."""

    address: str
    prefix: int
    server: str
    mtu: int
    ping_interval: int
    max_message: int
    session: str
    offload: bool = False  # each packet on the wire comes behind its virtio-net header
    routes: tuple[str, ...] = ()  # the management LAN: the device routes replies to these here
    version: int = VERSION
    type: str = "hello"

    def serialize(self) -> str:
        # Not asdict(), which deep-copies every value: a reconnect storm sends thousands a second.
        # routes only when there are some: a hello without [lan] is as it always was
        return _COMPACT_JSON.encode(
            {
                field.name: getattr(self, field.name)
                for field in fields(self)
                if field.name != "routes" or self.routes
            }
        )

    @classmethod
    def parse(cls, text: str) -> Hello:
        """Parse and check a hello; raise :class:`HelloError` naming what is wrong."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HelloError(f"hello is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("type") != "hello":
            raise HelloError("first message is not a hello")
        if data.get("version") != VERSION:
            raise HelloError(
                f"hello has protocol version {data.get('version')!r}, expected {VERSION}"
            )
        fields = {
            "address": str,
            "prefix": int,
            "server": str,
            "mtu": int,
            "ping_interval": int,
            "max_message": int,
            "session": str,
        }
        for name, kind in fields.items():
            if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
                raise HelloError(f"hello field {name!r} is missing or not a {kind.__name__}")
        try:
            ipaddress.IPv4Address(data["address"])
            ipaddress.IPv4Address(data["server"])
        except ValueError as exc:
            raise HelloError(f"hello carries a bad address: {exc}") from None
        if not 0 < data["prefix"] <= 32:
            raise HelloError(f"hello prefix {data['prefix']} is out of range")
        if not 576 <= data["mtu"] <= 65535:
            raise HelloError(f"hello mtu {data['mtu']} is out of range 576-65535")
        if data["ping_interval"] < 1 or data["max_message"] < data["mtu"]:
            raise HelloError("hello ping_interval or max_message is out of range")
        offload = data.get("offload", False)
        if not isinstance(offload, bool):
            raise HelloError("hello field 'offload' is not true or false")
        routes = data.get("routes", [])
        if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
            raise HelloError("hello field 'routes' is not a list of networks")
        try:
            routes = [str(ipaddress.IPv4Network(r)) for r in routes]
        except ValueError as exc:
            raise HelloError(f"hello carries a bad route: {exc}") from None
        return cls(**{name: data[name] for name in fields}, offload=offload, routes=tuple(routes))


def offered_version(protocols: Iterable[str]) -> int | None:
    """Return the highest ``ovl.vN`` version a client offers, or None when it offers none."""
    versions = []
    for protocol in protocols:
        number = protocol[len(SUBPROTOCOL_PREFIX) :]
        # ASCII digits only ("ovl.v²" is a digit to str.isdigit), and few of them
        if protocol.startswith(SUBPROTOCOL_PREFIX) and number.isascii() and number.isdigit():
            versions.append(int(number[:9]) if len(number) <= 9 else 10**9)
    return max(versions) if versions else None


def split_packets(frame: bytes, header: int = 0) -> list[memoryview]:
    """Split a binary frame into its packets, as zero-copy views; with ``header``
    (offload: 10), each packet comes behind that many bytes, which its view includes.

    Raises :class:`FrameError` when the frame is empty, ends inside a packet, or
    holds something that is not an IPv4/IPv6 header: the frame is then dropped whole.
    """
    if not frame:
        raise FrameError("empty frame")
    view = memoryview(frame)
    packets = []
    offset = 0
    end = len(frame)
    while offset < end:
        try:
            length = header + packet_length(view, offset + header)
        except PacketError as exc:
            raise FrameError(f"bad packet at byte {offset + header}: {exc}") from None
        if offset + length > end:
            raise FrameError(f"packet at byte {offset} says {length} bytes, {end - offset} remain")
        packets.append(view[offset : offset + length])
        offset += length
    return packets
