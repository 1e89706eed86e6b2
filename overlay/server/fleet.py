"""Which node of the fleet holds each tunnel, so that a (device, VRF) has one live tunnel.

Every node records the tunnels it holds in the store's ``tunnels`` table: a
row per (device, VRF) with the node, the session id and when the session
began (``since``). A node claims a row when a tunnel opens and drops it when
the tunnel ends. A claim takes the row only from an older session; when it
does, PostgreSQL notifies every node (LISTEN/NOTIFY, channel
``overlay_tunnels``), and the node holding the older tunnel closes it with
4001 at once. A device unbound or removed on any node (``overlay device``)
is announced on ``overlay_devices``: every node forgets what it held in
memory of it and closes its tunnels with 4003. A claim that finds a newer
row means a newer tunnel lives elsewhere, and this node closes its own.

A node keeps its rows alive every third of ``node.tunnel_ttl``; a node that
stopped cleanly has removed them, and rows a dead node left expire after
``tunnel_ttl``. The same beat reconciles what notifications could miss (the
store was down, the listening connection broke): rows missing for live
tunnels are claimed again; a newer row held elsewhere closes the local tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import structlog

from overlay.exceptions import StoreError
from overlay.server.postgres import (
    DEVICES_CHANNEL,
    Connection,
    PostgresStore,
    columns,
    execute,
    fetch,
)
from overlay.status import FleetTunnel

log = structlog.get_logger("overlay.server")

CHANNEL = "overlay_tunnels"
WINDOW = 0.05  # seconds claims and drops wait to share one statement


@dataclass(frozen=True, slots=True)
class Tunnel:
    device: str
    vrf: str
    session: str
    since: float  # when the session began (the node's wall clock)

    @property
    def key(self) -> tuple[str, str]:
        return (self.device, self.vrf)


# The tunnels this node holds now; what to do when a newer one of (device, VRF) lives
# on another node: close the local one (device, VRF, that node, the newer one's since);
# and when a device was unbound or removed on any node: close its tunnels (4003).
Live = Callable[[], list[Tunnel]]
Newer = Callable[[str, str, str, float], None]
Gone = Callable[[str], None]

CLAIM = f"""
WITH claimed AS (
    INSERT INTO tunnels (device, vrf, node, session, since)
    SELECT d, v, %(node)s, s, t
    FROM unnest(%(devices)s::text[], %(vrfs)s::text[], %(sessions)s::text[], %(since)s::float8[])
        AS x(d, v, s, t)
    ON CONFLICT (device, vrf) DO UPDATE
        SET node = excluded.node, session = excluded.session, since = excluded.since,
            seen = now()
        WHERE tunnels.since <= excluded.since
    RETURNING device, vrf, since
)
SELECT device, vrf,
    pg_notify('{CHANNEL}', json_build_array(device, vrf, %(node)s::text, since)::text)
FROM claimed
"""
DROP = """
DELETE FROM tunnels t
USING unnest(%s::text[], %s::text[], %s::text[]) AS x(d, v, s)
WHERE t.device = x.d AND t.vrf = x.v AND t.session = x.s
"""
# Rows that differ from this node's live tunnels: missing ones (node NULL), or held by
# another session here or elsewhere.
DIFFERENT = """
SELECT x.d, x.v, t.node, t.since
FROM unnest(%s::text[], %s::text[], %s::text[]) AS x(d, v, s)
LEFT JOIN tunnels t ON t.device = x.d AND t.vrf = x.v
WHERE t.session IS DISTINCT FROM x.s
"""


class Fleet:
    """This node's part of the ``tunnels`` table."""

    def __init__(
        self, store: PostgresStore, node: str, ttl: float, live: Live, newer: Newer, gone: Gone
    ) -> None:
        self.store, self.node, self.ttl = store, node, ttl
        self.live, self.newer, self.gone = live, newer, gone
        self._claims: dict[tuple[str, str], Tunnel] = {}
        self._drops: dict[tuple[str, str], Tunnel] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Forget the rows this node left before (it holds no tunnel yet), then listen and
        beat."""
        await self.store.run(
            lambda conn: conn.execute("DELETE FROM tunnels WHERE node = %s", (self.node,))
        )
        for work in (self._listen(), self._beat()):
            self._tasks.add(asyncio.create_task(work))

    def claim(self, tunnel: Tunnel) -> None:
        self._claims[tunnel.key] = tunnel
        self._schedule()

    def drop(self, tunnel: Tunnel) -> None:
        claimed = self._claims.get(tunnel.key)
        if claimed is not None and claimed.session == tunnel.session:
            del self._claims[tunnel.key]  # never recorded: nothing to drop
            return
        self._drops[tunnel.key] = tunnel
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(WINDOW, self._flush)

    def _flush(self) -> None:
        self._timer = None
        task = asyncio.create_task(self._record())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self) -> None:
        """Write the window's drops and claims; what the store could not take waits for the
        beat after its return."""
        drops, self._drops = self._drops, {}
        claims, self._claims = self._claims, {}
        try:
            if drops:
                rows = [(t.device, t.vrf, t.session) for t in drops.values()]
                await self.store.run(lambda conn: execute(conn, DROP, columns(rows)))
            if claims:
                await self._claim(list(claims.values()))
        except StoreError:
            for key, tunnel in drops.items():
                self._drops.setdefault(key, tunnel)
            for key, tunnel in claims.items():
                self._claims.setdefault(key, tunnel)

    async def _claim(self, tunnels: list[Tunnel]) -> None:
        devices, vrfs, sessions, since = columns(
            [(t.device, t.vrf, t.session, t.since) for t in tunnels]
        )
        params = {
            "node": self.node,
            "devices": devices,
            "vrfs": vrfs,
            "sessions": sessions,
            "since": since,
        }
        applied = await self.store.run(lambda conn: fetch(conn, CLAIM, params))
        taken = {(device, vrf) for device, vrf, _ in applied}
        for tunnel in tunnels:
            if tunnel.key not in taken:  # a newer row: a newer tunnel on another node
                self.newer(tunnel.device, tunnel.vrf, "another node", float("inf"))

    async def _beat(self) -> None:
        """Keep this node's rows alive, expire dead nodes' rows, reconcile."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            with contextlib.suppress(StoreError):
                await self.store.run(self._keep_alive)
                await self._reconcile(self.live())

    async def _reconcile(self, live: list[Tunnel]) -> None:
        """Claim again what the table lacks; close what a newer tunnel elsewhere replaced."""
        if live:
            rows = [(t.device, t.vrf, t.session) for t in live]
            different = await self.store.run(lambda conn: fetch(conn, DIFFERENT, columns(rows)))
            by_key = {t.key: t for t in live}
            for device, vrf, node, since in different:
                tunnel = by_key[(device, vrf)]
                if node is None or since <= tunnel.since:
                    self._claims.setdefault(tunnel.key, tunnel)
                else:
                    self.newer(device, vrf, node, since)
        if self._claims or self._drops:
            await self._record()

    async def _keep_alive(self, conn: Connection) -> None:
        async with conn.transaction():
            await conn.execute("UPDATE tunnels SET seen = now() WHERE node = %s", (self.node,))
            await conn.execute(
                "DELETE FROM tunnels WHERE seen < now() - make_interval(secs => %s)", (self.ttl,)
            )

    async def _listen(self) -> None:
        """Act on other nodes' claims, and on devices unbound or removed anywhere, as they
        commit; reconnect after a failure."""
        while True:
            try:
                async with await self.store.connect() as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute(f"LISTEN {DEVICES_CHANNEL}")
                    async for notice in conn.notifies():
                        if notice.channel == DEVICES_CHANNEL:
                            self.store.forget(notice.payload)
                            self.gone(notice.payload)
                        else:
                            self._notified(notice.payload)
            except (psycopg.Error, OSError):
                pass
            await asyncio.sleep(1)

    def _notified(self, payload: str) -> None:
        try:
            device, vrf, node, since = json.loads(payload)
        except (ValueError, TypeError):
            return
        if node != self.node:
            self.newer(device, vrf, node, float(since))

    async def close(self) -> None:
        """Stop listening and beating; remove this node's rows (its tunnels are closed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self.store.run(
                lambda conn: conn.execute("DELETE FROM tunnels WHERE node = %s", (self.node,))
            )


async def fleet_tunnels(store: PostgresStore) -> list[FleetTunnel]:
    """Every tunnel of the fleet, as the store records them."""
    rows = await store.run(
        lambda conn: fetch(
            conn,
            "SELECT device, vrf, node, session, since, "
            "extract(epoch from now() - seen)::float8 FROM tunnels ORDER BY device, vrf",
            (),
        )
    )
    return [
        {"device": d, "vrf": v, "node": n, "session": s, "since": t, "seen_ago": round(a, 1)}
        for d, v, n, s, t, a in rows
    ]
