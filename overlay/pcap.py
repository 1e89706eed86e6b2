"""pcap files of bare IP packets (libpcap format, LINKTYPE_RAW), as tcpdump and tshark read them.

https://www.tcpdump.org/manual/pcap-savefile.html: a 24-byte file header, then
per packet a 16-byte record header (seconds, microseconds, captured length,
original length) and the packet.
"""

from __future__ import annotations

import struct

MAGIC = 0xA1B2C3D4
LINKTYPE_RAW = 101  # the packet begins with an IPv4 or IPv6 header
SNAPLEN = 65535

_FILE = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
FILE_HEADER_BYTES = _FILE.size
RECORD_HEADER_BYTES = _RECORD.size


def file_header(snaplen: int = SNAPLEN) -> bytes:
    return _FILE.pack(MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_RAW)


def record(timestamp: float, packet: bytes | memoryview, snaplen: int = SNAPLEN) -> bytes:
    seconds = int(timestamp)
    micros = int((timestamp - seconds) * 1_000_000)
    kept = bytes(packet[:snaplen])
    return _RECORD.pack(seconds, micros, len(kept), len(packet)) + kept


def captured(record_header: bytes) -> int:
    """How many bytes of packet follow a record header."""
    return int(_RECORD.unpack(record_header)[2])


def read(data: bytes) -> list[tuple[float, bytes]]:
    """The packets of a pcap file written by this module (for tests and tools)."""
    magic, _, _, _, _, _, linktype = _FILE.unpack_from(data)
    if magic != MAGIC or linktype != LINKTYPE_RAW:
        raise ValueError("not a raw-IP pcap file written by overlay")
    packets, offset = [], _FILE.size
    while offset < len(data):
        seconds, micros, kept, _ = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        packets.append((seconds + micros / 1_000_000, data[offset : offset + kept]))
        offset += kept
    return packets
