"""One server's state at run time: its sessions, router, firewall and stores, what it
has counted, and what an operator may ask of it (status, unbind, remove, rules, flows).

The tunnel endpoint (:mod:`overlay.server.endpoint`) opens sessions here; the
control socket, the admin API and the shutdown act on them through this class.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from overlay import __version__, wire
from overlay.counters import Counters
from overlay.server.birdwatch import BirdWatch
from overlay.server.config import ServerConfig
from overlay.server.firewall import Firewall
from overlay.server.fleet import Tunnel
from overlay.server.gate import Gate
from overlay.server.policy import Policy
from overlay.server.qoe import Collector
from overlay.server.router import Router
from overlay.server.routes import KernelRoutes
from overlay.server.rulebook import Rulebook
from overlay.server.sessions import ServerSession
from overlay.server.store import Store
from overlay.server.wheel import Wheel
from overlay.status import (
    CertificateStatus,
    FlowStatus,
    LanStatus,
    ServerStatus,
    SessionStatus,
)
from overlay.tun import TunDevice

log = structlog.get_logger("overlay.server")


class Claims(Protocol):
    """Where a server records the tunnels it opens and ends, so that a (device, VRF) has
    one live tunnel: the fleet's table (:class:`~overlay.server.fleet.Fleet`) or the
    workers' relay (:class:`~overlay.server.relay.Relay`)."""

    def claim(self, tunnel: Tunnel) -> None: ...

    def drop(self, tunnel: Tunnel) -> None: ...


class Node:
    """One overlay server: owns the lease store, the TUN, the router and the sessions."""

    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        tun: TunDevice,
        collector: Collector | None,
        rulebook: Rulebook,
        certificate: Callable[[], CertificateStatus] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.tun = tun
        self.collector = collector
        self.rulebook = rulebook
        self.certificate = certificate  # the certificate's status, for status and metrics
        self.firewall = Firewall(rulebook.ruleset, config.firewall.limits)
        self.router: Router[ServerSession] = Router(
            tun,
            Policy(management=config.lan.management),
            self.firewall,
            batch_bytes=config.max_message,
        )
        self.refusals: Counter[str] = Counter()
        self.gate = Gate(config.max_pending, config.handshake_timeout, self.refusals)
        self.started = time.time()
        self.handshakes = 0
        self._sessions: set[ServerSession] = set()
        self.wheel: Wheel[ServerSession] = Wheel(time.monotonic())  # their keepalive
        self.claims: Claims | None = None  # the fleet's table, or the workers' relay
        self.routes: KernelRoutes | None = None  # a /32 per tunnel, for BGP (overlay.routes)
        self.bird: BirdWatch | None = None  # with [bgp]: whether BIRD runs to announce them
        self.taken_over = 0  # tunnels closed for a newer one on another node
        self.lan_routes = tuple(str(net) for net in config.lan.management)  # for the hello
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = Counters()  # what sessions that have ended carried and dropped

    def opened(self, session: ServerSession) -> ServerSession | None:
        """A new session carries its (device, VRF) from now on; return the one it replaces."""
        self.handshakes += 1
        self._sessions.add(session)
        self.wheel.schedule(session, time.monotonic() + session.keepalive.interval)
        if self.claims is not None:
            self.claims.claim(tunnel(session))
        if self.routes is not None:
            for address in self._routed(session.lease.address):
                self.routes.add(address)
        return self.router.attach(session)

    def ended(self, session: ServerSession) -> None:
        self.router.detach(session)
        self._sessions.discard(session)
        self._closed.merge(session.counters)
        if self.claims is not None:
            self.claims.drop(tunnel(session))
        if self.routes is not None and session.key not in self.router.by_key:
            for address in self._routed(session.lease.address):  # not when a newer one holds it
                self.routes.remove(address)

    async def keep_alive(self, tick: float = 1.0) -> None:
        """Every ``tick`` seconds, give the sessions whose ping interval is up their beat:
        one timer for every tunnel; until cancelled."""
        wheel = self.wheel
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for session in wheel.due(now):
                if session.beat(now):
                    wheel.schedule(session, now + session.keepalive.interval)

    def _routed(self, address: ipaddress.IPv4Address) -> list[ipaddress.IPv4Address]:
        """The routes of a tunnel: its overlay address, and its LAN address with [lan] prefix."""
        lan = self.config.lan.lan_address(address)
        return [address] if lan is None else [address, lan]

    def lan_address(self, address: ipaddress.IPv4Address) -> str | None:
        lan = self.config.lan.lan_address(address)
        return None if lan is None else str(lan)

    def live(self) -> list[Tunnel]:
        """The tunnels this node carries now, for the fleet's table."""
        return [tunnel(session) for session in self.router.by_key.values()]

    def newer_elsewhere(self, device: str, vrf: str, node: str, since: float) -> None:
        """A newer tunnel of (device, VRF) opened on ``node``: close ours with 4001."""
        session = self.router.by_key.get((device, vrf))
        if session is None or session.since >= since:
            return
        self.taken_over += 1
        log.info("tunnel taken over on another node", device=device, vrf=vrf, by=node)
        self._close(session, wire.CloseCode.REPLACED, f"replaced by a newer session on {node}")

    def status(self) -> ServerStatus:
        totals = Counters()
        totals.merge(self._closed)
        for session in self._sessions:
            totals.merge(session.counters)
        totals.drops.update(self.router.drops)
        flows = {a: len(t.flows) for a, t in self.router.flows.items()}
        now = time.monotonic()
        sessions: list[SessionStatus] = [
            s.status(flows.get(s.address_bytes, 0), self.lan_address(s.lease.address))
            for s in self._sessions
        ]
        config = self.config
        return {
            "server": {
                "node": config.node,
                "overlay": str(config.address),
                "version": __version__,
                "tun": self.tun.name,
                "listen": f"{config.host}:{config.port}{config.path}",
                "started": self.started,
                "leases": len(self.store),
                "pool": f"{config.pool.first}-{config.pool.last}",
                "pool_size": config.pool.capacity,
                "pending": self.gate.pending,
                "handshakes": self.handshakes,
                "enrolled": self.store.enrolled(),
                "store": self.store.status(),
                "taken_over": self.taken_over,
                "routes": None
                if self.routes is None
                else {"installed": len(self.routes.installed), "errors": dict(self.routes.errors)},
                "bird": None
                if self.bird is None
                else {"socket": str(self.bird.socket), "up": self.bird.up},
                "lan": self._lan_status(),
            },
            "sessions": sorted(sessions, key=lambda s: s["address"]),
            "leases": [
                {
                    "device": lease.device,
                    "vrf": lease.vrf,
                    "address": str(lease.address),
                    "lan_address": self.lan_address(lease.address),
                }
                for lease in self.store.all()
            ],
            "refusals": dict(self.refusals),
            "drops": dict(totals.drops),
            "totals": totals.as_dict(),
            "qoe": dict(self.collector.counters) if self.collector else None,
            "firewall": {
                "rules": len(self.rulebook.ruleset.rules),
                "rules_from": "state" if self.rulebook.changed else "config",
                "flows": sum(flows.values()),
                "opened": self.firewall.opened,
                "unmatched": self.rulebook.ruleset.unmatched,
                "hits": [(r.number, r.action, r.hits) for r in self.rulebook.ruleset.rules],
                "max_flows": config.firewall.limits.max_flows,
                "sip": dict(self.firewall.sip),
                "sip_held": sum(
                    flow.held > now for table in self.router.flows.values() for _, flow in table.sip
                ),
            },
            "certificate": self.certificate() if self.certificate else None,
        }

    def _lan_status(self) -> LanStatus | None:
        lan = self.config.lan
        if not lan.translates and not lan.management:
            return None
        return {
            "prefix": None if lan.prefix is None else str(lan.prefix),
            "maps": None if lan.block is None else str(lan.block),
            "management": [str(net) for net in lan.management],
            "services": [s.describe() for s in lan.services],
        }

    def change_rules(self, command: dict[str, Any]) -> dict[str, Any]:
        """``overlay rule …``: change the running rules (and save them); flows stay."""
        result = self.rulebook.change(command)
        if command.get("op") != "list":
            log.info(
                "firewall rules changed",
                op=command.get("op"),
                rules=[f"{r['number']}:{r['action']}" for r in result["rules"]],
            )
        return result

    def flows(self, command: dict[str, Any]) -> dict[str, Any]:
        """The live flows of one device's addresses (``overlay status DEVICE``), or of every
        device when it names none (the SNMP flow table)."""
        device = command.get("device")
        now, wall = time.monotonic(), time.time()
        result: list[FlowStatus] = []
        for lease in self.store.all():
            if device is not None and lease.device != device:
                continue
            table = self.router.flows.get(lease.address.packed)
            if table is not None:
                result += [
                    {"vrf": lease.vrf, "address": str(lease.address), **flow}
                    for flow in table.describe(now, wall)
                ]
        return {"device": device, "flows": result}

    def gone(self, device: str) -> None:
        """The device was unbound or removed on some node of the fleet: close its tunnels
        here too (4003); its leases are gone from the store."""
        for session in [s for s in self._sessions if s.lease.device == device]:
            log.info("device unbound on the fleet", device=device, vrf=session.lease.vrf)
            self._close(session, wire.CloseCode.REMOVED, "device unbound")

    def _close(self, session: ServerSession, code: wire.CloseCode, reason: str) -> None:
        """Close ``session`` without waiting for it (from a store's notification)."""
        task = asyncio.create_task(session.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def unbind(self, device: str) -> dict[str, Any]:
        """Close the device's sessions (4003) and release its leases: a replacement unit with
        the same id registers fresh."""
        sessions = [s for s in list(self._sessions) if s.lease.device == device]
        await asyncio.gather(
            *(s.close(wire.CloseCode.REMOVED, "device unbound") for s in sessions),
            return_exceptions=True,
        )
        released = await self.store.release(device)
        log.info(
            "device unbound",
            device=device,
            sessions=len(sessions),
            released=[str(lease.address) for lease in released],
        )
        return {
            "device": device,
            "closed": len(sessions),
            "released": [str(lease.address) for lease in released],
        }

    async def remove(self, device: str) -> dict[str, Any]:
        """Unbind the device and take it out of the registry: it is refused from now on."""
        result = await self.unbind(device)
        result["removed"] = await self.store.unenroll(device)
        log.info("device removed", device=device)
        return result

    async def close_sessions(self) -> None:
        """Tell every device the server is going away (1001): they reconnect at once."""
        await asyncio.gather(
            *(
                s.close(wire.CloseCode.GOING_AWAY, "server going away")
                for s in list(self._sessions)
            ),
            return_exceptions=True,
        )


def tunnel(session: ServerSession) -> Tunnel:
    lease = session.lease
    return Tunnel(lease.device, lease.vrf, session.id, session.since)
