"""The server's router: packets between its TUN and the open sessions.

Theory of operation. The server has one TUN (169.254.0.1/16). Whatever the
management side sends to a device address arrives on it; :meth:`Router.run`
drains it in batches and puts each IPv4 packet in the send queue of the session
that holds the destination address, or counts it as ``no-session``; at the end
of the batch each session it fed sends what it got. Frames from a device go
through :meth:`Router.split` and :meth:`Router.from_device`: checked against the
policy (anti-spoofing, service range only), written to the TUN. Both ways, the
firewall then checks each packet against the flow table of the device address
(:mod:`overlay.server.firewall`). The tables belong to addresses, not sessions,
so flows outlive a reconnect. Each session sends from its own bounded queue, so
one slow device never stalls the router. Everything here runs in the callbacks
of the TUN's reader and of the sessions' connections: no task, no await.

The TUN reads and writes each packet behind a virtio-net header
(:mod:`overlay.offload`). A session with offload carries the headers over the
wire, so large TCP segments cross whole both ways; for a session without, the
router cuts and checksums what the kernel handed over, and writes the device's
packets behind an empty header.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from overlay.bridge import Sender
from overlay.counters import Counters, Drop
from overlay.exceptions import FrameError
from overlay.offload import HEADER_SIZE, PLAIN, acceptable
from overlay.packet import IPV4_DST
from overlay.server.firewall import Firewall, FlowTable
from overlay.server.policy import REPLIES_ONLY, Policy
from overlay.tun import TunDevice
from overlay.wire import split_packets

# Packets of one device handled between two turns of the event loop: a fraction of a
# millisecond of work, the most one device delays everyone else in a turn.
TURN_PACKETS = 64


class Routed(Protocol):
    """What the router needs of a session: who it is, where its packets go, what it counts."""

    @property
    def key(self) -> tuple[str, str]: ...  # (device, VRF)
    @property
    def address_bytes(self) -> bytes: ...
    @property
    def offload(self) -> bool: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def sender(self) -> Sender: ...

    turn_budget: int  # packets it may still hand over before the loop must turn

    def flush(self) -> None: ...  # send what its sender holds, as far as the socket takes it


class Tap(Protocol):
    """Something that sees each packet the router forwards (``overlay capture``)."""

    def offer(self, address: bytes, packet: bytes | memoryview) -> None: ...


S = TypeVar("S", bound=Routed)


class Router(Generic[S]):
    """Routes by overlay address between the TUN and sessions keyed by (device, VRF)."""

    def __init__(
        self, tun: TunDevice, policy: Policy, firewall: Firewall, batch_bytes: int
    ) -> None:
        self.tun = tun
        self.policy = policy
        self.firewall = firewall
        self.flows: dict[bytes, FlowTable] = {}  # by device address
        self.batch_bytes = batch_bytes
        self.by_address: dict[bytes, S] = {}
        self.by_key: dict[tuple[str, str], S] = {}
        self.drops: Counter[str] = Counter()  # drops not owned by any session
        self._taps: list[Tap] = []  # running captures (overlay capture); usually none

    @contextlib.contextmanager
    def tapped(self, tap: Tap) -> Iterator[None]:
        """Offer ``tap`` every packet forwarded while the body runs."""
        self._taps.append(tap)
        try:
            yield
        finally:
            self._taps.remove(tap)

    def attach(self, session: S) -> S | None:
        """Make ``session`` the one for its (device, VRF); return the one it replaces."""
        previous = self.by_key.get(session.key)
        self.by_key[session.key] = session
        self.by_address[session.address_bytes] = session
        self.flows.setdefault(session.address_bytes, FlowTable())
        return previous

    def detach(self, session: S) -> None:
        """Forget ``session`` unless a newer one has taken its place already."""
        if self.by_key.get(session.key) is session:
            del self.by_key[session.key]
        if self.by_address.get(session.address_bytes) is session:
            del self.by_address[session.address_bytes]

    def split(self, session: Routed, frame: bytes) -> list[memoryview] | None:
        """The records of one frame from ``session``; None (counted ``malformed``) when
        it does not split into whole packets."""
        counters = session.counters
        try:
            records = split_packets(frame, HEADER_SIZE if session.offload else 0)
        except FrameError:
            counters.drop(Drop.MALFORMED)
            return None
        counters.rx_frames += 1
        counters.rx_bytes += len(frame)
        return records

    def from_device(
        self, session: Routed, records: list[memoryview], start: int
    ) -> tuple[int, int]:
        """Deliver ``records[start:]`` from ``session`` to the TUN until its turn's budget
        is spent; return where it stopped (``len(records)`` when done) and how many were
        refused (not allowed, spoofed…: not those the TUN had no room for).

        A device may send thousands of small packets in a frame, or many small frames
        at once. Every ``TURN_PACKETS`` of its packets, across frames, the session lets
        the event loop turn before it goes on, and stops reading its socket meanwhile,
        so that one device delays the others' packets and handshakes by at most that
        much work each turn, and TCP slows the device down."""
        counters, offload = session.counters, session.offload
        check, write, source = self.policy.from_device, self.tun.write, session.address_bytes
        firewall, table, now = self.firewall.check, self.flows[source], time.monotonic()
        taps, refused, budget = self._taps, 0, session.turn_budget
        stop = min(len(records), start + budget)
        for index in range(start, stop):
            record = records[index]
            if offload:
                packet = record[HEADER_SIZE:]
                if not acceptable(record):
                    counters.drop(Drop.BAD_OFFLOAD)
                    refused += 1
                    continue
            else:
                packet = record
            reason = check(packet, source)
            if reason is None:
                reason = firewall(table, packet, False, now)
            elif reason is REPLIES_ONLY:
                reason = firewall(table, packet, False, now, False)
            if reason is not None:
                counters.drop(reason)
                refused += 1
            elif write(record) if offload else write(PLAIN, packet):
                counters.rx_packets += 1
                for tap in taps:
                    tap.offer(source, packet)
            else:
                counters.drop(Drop.TUN_FULL)
        session.turn_budget = budget - (stop - start)
        return stop, refused

    async def run(self) -> None:
        """Forward what the TUN reads to the sessions as it arrives, until cancelled.

        A reader callback rather than a loop that awaits readability: no future and
        no epoll registration per wake-up, one hop less for every packet."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.tun.fd, self._readable)
        try:
            await loop.create_future()  # the callback does the work
        finally:
            loop.remove_reader(self.tun.fd)

    def _readable(self) -> None:
        by_address, drops, taps = self.by_address, self.drops, self._taps
        firewall, flows = self.firewall.check, self.flows
        now = time.monotonic()
        touched: set[S] = set()
        for record in self.tun.read_batch(self.batch_bytes):
            packet = memoryview(record)[HEADER_SIZE:]
            if packet[0] >> 4 != 4:
                drops[Drop.UNSUPPORTED.value] += 1
                continue
            destination = packet[IPV4_DST].tobytes()
            session = by_address.get(destination)
            if session is None:
                drops[Drop.NO_SESSION.value] += 1
                continue
            reason = firewall(flows[destination], packet, True, now)
            if reason is not None:
                session.counters.drop(reason)
                continue
            if not session.sender.put_read(record, now, session.offload):
                continue
            touched.add(session)
            for tap in taps:
                tap.offer(destination, packet)
        for session in touched:  # what this batch queued leaves now, a frame per session
            session.flush()

    async def sweep(self, interval: float = 10.0) -> None:
        """Forget ended flows every ``interval`` seconds, and the tables of addresses that
        have neither a session nor a flow left; until cancelled."""
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for address, table in list(self.flows.items()):
                self.firewall.sweep(table, now)
                if not table.flows and address not in self.by_address:
                    del self.flows[address]
