"""A kernel route per tunnel: the device's /32 towards this node's TUN.

The routes carry a routing protocol number of our own (``PROTOCOL``, 250), so
that the server touches nothing else in the routing table and a BGP daemon can
pick exactly these (BIRD: ``krt_source = 250``, docs/reach.md). A node removes
its protocol's routes through its TUN when it starts (what a killed run left)
and when it stops; the routes of the other workers of the same server
(``listen.workers``) stay. A device that moved to another worker's TUN has its
route replaced there: the delete of the old one, which finds no route through
this TUN, is not an error. Route changes are written over netlink in order, in one thread, so
that a handshake never waits for the kernel; those queued meanwhile go as one
run (:class:`overlay.rtnl.RouteSocket`: 10,000 returning tunnels' routes in well
under a second, where one pyroute2 call per route took 4.3 s). pyroute2 reads
and flushes the table at start and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from overlay.rtnl import PROTOCOL, RTM_DELROUTE, RTM_NEWROUTE, RouteSocket

log = structlog.get_logger("overlay.server")

T = TypeVar("T")
RUN = 1024  # route changes written together at most


class KernelRoutes:
    """The /32 routes of the tunnels this node holds, towards ``device``.

    The netlink sockets live in one thread of their own: pyroute2's asyncio API needs a
    datagram endpoint uvloop does not offer, and a netlink request blocks."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.installed: set[ipaddress.IPv4Address] = set()
        self.errors: Counter[str] = Counter()  # failed route changes, by operation
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="routes")
        self._ipr: IPRoute | None = None
        self._socket: RouteSocket | None = None
        self._index = 0
        self._changes: asyncio.Queue[tuple[str, ipaddress.IPv4Address]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, device: str) -> KernelRoutes:
        """Routes towards ``device`` (the TUN, up already); ours left by a killed run go."""
        routes = cls(device)
        await routes._call(routes._open)
        removed = await routes._call(routes._flush)
        if removed:
            log.info("removed routes a previous run left", routes=removed, device=device)
        routes._writer = asyncio.create_task(routes._write())
        return routes

    def add(self, address: ipaddress.IPv4Address) -> None:
        """Route ``address`` to the TUN (soon, in order with the other changes)."""
        self._changes.put_nowait(("replace", address))

    def remove(self, address: ipaddress.IPv4Address) -> None:
        self._changes.put_nowait(("del", address))

    async def close(self) -> None:
        """Stop writing and remove every route of ours."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self._call(self._flush)
        await self._call(self._close)
        self._thread.shutdown()

    async def _write(self) -> None:
        while True:
            run = [await self._changes.get()]
            while not self._changes.empty() and len(run) < RUN:
                run.append(self._changes.get_nowait())
            try:
                codes = await self._call(self._change, run)
            except OSError as exc:
                codes = [exc.errno or errno.EIO] * len(run)
            for (op, address), code in zip(run, codes, strict=True):
                if code == errno.ESRCH and op == "del":  # it goes to another worker now
                    self.installed.discard(address)
                elif code:
                    self.errors[op] += 1
                    log.error(
                        "cannot change a tunnel's route",
                        op=op,
                        address=str(address),
                        error=os.strerror(code),
                    )
                elif op == "replace":
                    self.installed.add(address)
                else:
                    self.installed.discard(address)

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    # In the routes thread:

    def _open(self) -> None:
        self._ipr = IPRoute()
        (self._index,) = self._ipr.link_lookup(ifname=self.device)
        self._socket = RouteSocket()

    def _change(self, run: list[tuple[str, ipaddress.IPv4Address]]) -> list[int]:
        assert self._socket is not None
        kinds = {"replace": RTM_NEWROUTE, "del": RTM_DELROUTE}
        return self._socket.change(
            [(kinds[op], ipaddress.IPv4Network(address), self._index) for op, address in run]
        )

    def _flush(self) -> int:
        """Remove every route of our protocol through our TUN from the main table; how many
        there were."""
        assert self._ipr is not None
        found = [
            (r.get("RTA_DST"), r["dst_len"])
            for r in self._ipr.route("dump", family=socket.AF_INET, proto=PROTOCOL)
            if r.get("RTA_OIF") == self._index
        ]
        for destination, length in found:
            with contextlib.suppress(NetlinkError):
                self._ipr.route(
                    "del",
                    dst=f"{destination}/{length}",
                    proto=PROTOCOL,
                    scope="link",
                    oif=self._index,
                )
        self.installed.clear()
        return len(found)

    def _close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
        if self._socket is not None:
            self._socket.close()
