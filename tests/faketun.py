"""A TUN stand-in for tests that need no root: a SOCK_SEQPACKET socketpair.

One end is the "device" the code under test reads and writes (through the same
record functions as the real TUN, so ``loop.add_reader`` works on it unchanged);
the other end is the "kernel" side the test drives: what a test ``inject``s is
read by the code as if the kernel had routed it, and what the code writes is
``written`` to the test. Like wireguard-go's ``tun/tuntest.ChannelTUN``.
"""

from __future__ import annotations

import socket

from overlay.offload import MAX_RECORD, PLAIN
from overlay.tun import read_records, write_record


class FakeTun:
    def __init__(self, name: str = "fake0", offload: bool = False) -> None:
        self.name = name
        self.offload = offload
        self._device, self._kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._device.setblocking(False)
        self._kernel.setblocking(False)
        self.fd = self._device.fileno()

    def read_batch(self, max_bytes: int) -> list[bytes]:
        return read_records(self.fd, max_bytes)

    def write(self, *parts: bytes | memoryview) -> bool:
        return write_record(self.fd, parts)

    def inject(self, packet: bytes, header: bytes = PLAIN) -> None:
        """The kernel routes ``packet`` to the TUN: the code under test will read it."""
        self._kernel.send(header + packet)

    def written(self) -> list[bytes]:
        """The packets (headers cut off) that the code wrote to the TUN since the last call."""
        records = []
        while True:
            try:
                records.append(self._kernel.recv(MAX_RECORD))
            except BlockingIOError:
                return [record[len(PLAIN) :] for record in records]

    def close(self) -> None:
        self._device.close()
        self._kernel.close()
