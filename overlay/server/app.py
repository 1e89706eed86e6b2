"""The server at run time: the TLS listener, the tunnel endpoint, the router, the control socket.

A tunnel request goes through, in order: the header checks of
:mod:`overlay.server.handshake` (400/426/401), the credentials (401, checked off
the event loop), the lease (503 when the pool is exhausted). Only then is the
WebSocket upgraded, an older session of the same (device, VRF) closed with
4001, and the hello sent. Every refusal is counted by reason and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import math
import secrets
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from aiohttp import web

from overlay import bridge, certs, control, wire
from overlay import log as overlay_log
from overlay.addressing import OVERLAY
from overlay.codel import Codel
from overlay.counters import Counters
from overlay.exceptions import ConfigError, PoolExhaustedError, StoreError
from overlay.process import spare_full_collections
from overlay.server import admin
from overlay.server.auth import Checker, Credentials, PasswordHash
from overlay.server.capture import capture_handler
from overlay.server.config import ServerConfig
from overlay.server.firewall import Firewall
from overlay.server.gate import Gate
from overlay.server.handshake import Refusal, TunnelRequest, check_request
from overlay.server.leases import LeaseStore
from overlay.server.policy import Policy
from overlay.server.qoe import MAX_REPORT, Collector, ReportStore
from overlay.server.ratelimit import FailureLimiter
from overlay.server.registry import Enrollment, Registry
from overlay.server.router import Router
from overlay.server.rulebook import Rulebook
from overlay.server.sessions import ServerSession
from overlay.server.sqlite import GroupCommit
from overlay.tun import Tun

log = structlog.get_logger("overlay.server")
T = TypeVar("T")
# Connections the kernel may hold for us before accept(). asyncio's default, 100,
# overflowed in a storm: each dropped SYN cost its device a 1 s (then 3, 7 s)
# retransmission. Linux caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 4096


def tls_context(config: ServerConfig) -> ssl.SSLContext:
    """TLS 1.2 or newer with the library's default (strong) ciphers and no compression.

    No TLS 1.3 session tickets: devices never resume a session, and the two
    tickets OpenSSL sends by default cost a sixth of the server's handshake.
    With ``auth.client_ca_file``, devices are asked for a certificate from that CA;
    sending none is allowed here, and refused later for devices enrolled with
    ``--require-cert``.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.num_tickets = 0
    key_log = overlay_log.tls_key_log()
    if key_log is not None:
        context.keylog_filename = key_log
    certs.load_cert_chain(context, config.cert_file, config.key_file)
    if config.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"auth.client_ca_file: cannot load {config.client_ca_file}: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class Server:
    """One overlay server: owns the lease store, the TUN, the router and the sessions."""

    def __init__(
        self,
        config: ServerConfig,
        store: LeaseStore,
        registry: Registry,
        commits: GroupCommit,
        tun: Tun,
        collector: Collector | None,
        rulebook: Rulebook,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.commits = commits
        self.tun = tun
        self.collector = collector
        self.rulebook = rulebook
        self.checker = Checker()
        self.firewall = Firewall(rulebook.ruleset, config.firewall.limits)
        self.router = Router(tun, Policy(), self.firewall, batch_bytes=config.max_message)
        self.refusals: Counter[str] = Counter()
        self.limiter = FailureLimiter(config.max_failures, config.failure_window, config.lockout)
        self.gate = Gate(config.max_pending, config.handshake_timeout, self.refusals)
        self.started = time.time()
        self._sessions: set[ServerSession] = set()
        self._closed = Counters()  # what sessions that have ended carried and dropped
        self.handshakes = 0
        self._checks: dict[bytes, asyncio.Future[bool]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.config.path, self.handle_tunnel)
        return app

    def _refuse(self, request: web.Request, refusal: Refusal, device: str = "") -> web.Response:
        self.refusals[refusal.reason] += 1
        log.warning(
            "tunnel refused",
            status=refusal.status,
            reason=refusal.reason,
            peer=request.remote,
            device=device or None,
        )
        headers = {}
        if refusal.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="overlay"'
        elif refusal.status == 426:
            headers["Sec-WebSocket-Protocol"] = wire.SUBPROTOCOL
        return web.Response(status=refusal.status, text=refusal.message + "\n", headers=headers)

    def expected(self, enrollment: Enrollment | None) -> Credentials | None:
        """A device's own credentials (its id and password), else the shared ones, if any."""
        if enrollment is not None and enrollment.password_hash is not None:
            return Credentials(enrollment.device, PasswordHash.parse(enrollment.password_hash))
        return self.config.shared

    async def _authenticate(self, expected: Credentials, request: TunnelRequest) -> bool:
        """Check credentials; identical checks under way at once share one scrypt run.

        After a restart every device arrives at once with the same shared
        credentials: one scrypt (16 MiB, tens of ms) answers them all.
        """
        username, password = request.username, request.password
        key = self.checker.token(expected, username, password)
        if self.checker.remembered(key):
            return True
        pending = self._checks.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                asyncio.to_thread(self.checker.check, expected, username, password, key)
            )
            self._checks[key] = pending
            pending.add_done_callback(lambda _: self._checks.pop(key, None))
        return await asyncio.shield(pending)

    def _failed(self, source: str, now: float) -> None:
        if self.limiter.failed(source, now):
            log.warning(
                "address locked out after failed logins", peer=source, lockout=self.config.lockout
            )
            self.limiter.forget_old(now)

    async def handle_tunnel(self, request: web.Request) -> web.StreamResponse:
        source = request.remote or "?"
        now = time.monotonic()
        wait = self.limiter.retry_after(source, now)
        if wait > 0:
            self.refusals["rate-limited"] += 1
            return web.Response(
                status=429,
                text="too many failed attempts from this address\n",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        checked = check_request(request.headers)
        if isinstance(checked, Refusal):
            return self._refuse(request, checked, request.headers.get(wire.HEADER_DEVICE, ""))
        enrollment = self.registry.get(checked.device)
        if enrollment is None and not self.config.auto_enroll:
            self._failed(source, now)  # scanning for device ids counts like guessing
            return self._refuse(
                request, Refusal(403, "not-enrolled", "device not enrolled"), checked.device
            )
        if enrollment is not None and enrollment.client_cert:
            transport = request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            names = certs.certificate_names(peercert)
            if checked.device not in names:
                self._failed(source, now)
                return self._refuse(
                    request,
                    Refusal(401, "client-certificate", "no client certificate naming the device"),
                    checked.device,
                )
        expected = self.expected(enrollment)
        if expected is None or not await self._authenticate(expected, checked):
            self._failed(source, now)
            return self._refuse(
                request, Refusal(401, "bad-credentials", "bad username or password"), checked.device
            )
        try:
            if enrollment is None:
                self.registry.add(checked.device, None)
            lease = self.store.lease(checked.device, checked.vrf)
            await self.commits.wait()  # durable before the hello announces it
        except PoolExhaustedError as exc:
            return self._refuse(request, Refusal(503, "pool-exhausted", str(exc)), checked.device)
        except StoreError as exc:
            log.error("cannot store the enrolment or lease", device=checked.device, error=str(exc))
            return self._refuse(
                request,
                Refusal(503, "store-error", "the server cannot store the lease; try later"),
                checked.device,
            )
        if enrollment is None:
            log.info("device enrolled automatically", device=checked.device, peer=source)

        config = self.config
        ws = web.WebSocketResponse(
            protocols=(wire.SUBPROTOCOL,),
            autoping=False,
            compress=False,
            max_msg_size=config.max_message,
            writer_limit=0,  # wait for the transport after every frame (bridge.UNSENT_BYTES)
        )
        await ws.prepare(request)
        self.gate.settled(request.transport)
        bridge.bound_send_buffers(request.transport, inherited=True)  # listen_for_tunnels
        self.handshakes += 1
        session = ServerSession(
            ws,
            lease,
            request.remote or "?",
            secrets.token_hex(8),
            config.queue_bytes,
            config.max_message,
            config.ping_interval,
            config.keepalive_misses,
            Codel(config.queue_target, config.queue_interval),
            offload=config.offload and checked.offload,
        )
        previous = self.router.attach(session)
        self._sessions.add(session)
        try:
            if previous is not None:
                await previous.close(wire.CloseCode.REPLACED, "replaced by a newer session")
            hello = wire.Hello(
                address=str(lease.address),
                prefix=OVERLAY.prefixlen,
                server=str(config.address),
                mtu=config.mtu,
                ping_interval=config.ping_interval,
                max_message=config.max_message,
                session=session.id,
                offload=session.offload,
            )
            await session.run(self.router, hello)
        finally:
            self.router.detach(session)
            self._sessions.discard(session)
            self._closed.merge(session.counters)
        return ws

    def status(self) -> dict[str, Any]:
        totals = Counters()
        totals.merge(self._closed)
        for session in self._sessions:
            totals.merge(session.counters)
        totals.drops.update(self.router.drops)
        flows = {a: len(t.flows) for a, t in self.router.flows.items()}
        sessions = [s.status() | {"flows": flows.get(s.address_bytes, 0)} for s in self._sessions]
        return {
            "server": {
                "overlay": str(self.config.address),
                "tun": self.tun.name,
                "listen": f"{self.config.host}:{self.config.port}{self.config.path}",
                "started": self.started,
                "leases": len(self.store),
                "pool": f"{self.config.pool.first}-{self.config.pool.last}",
                "pool_size": self.config.pool.capacity,
                "pending": self.gate.pending,
                "handshakes": self.handshakes,
                "enrolled": self.registry.count(),
            },
            "sessions": sorted(sessions, key=lambda s: s["address"]),
            "leases": [
                {"device": lease.device, "vrf": lease.vrf, "address": str(lease.address)}
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
                "max_flows": self.config.firewall.limits.max_flows,
            },
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
        """The live flows of one device's addresses (``overlay status DEVICE``)."""
        device = command.get("device")
        now, wall = time.monotonic(), time.time()
        result = []
        for lease in self.store.all():
            if lease.device != device:
                continue
            table = self.router.flows.get(lease.address.packed)
            if table is not None:
                result += [
                    {"vrf": lease.vrf, "address": str(lease.address), **flow}
                    for flow in table.describe(now, wall)
                ]
        return {"device": device, "flows": result}

    async def unbind(self, device: str) -> dict[str, Any]:
        """Close the device's sessions (4003) and release its leases: a replacement unit with
        the same id registers fresh."""
        sessions = [s for s in list(self._sessions) if s.lease.device == device]
        await asyncio.gather(
            *(s.close(wire.CloseCode.REMOVED, "device unbound") for s in sessions),
            return_exceptions=True,
        )
        released = self.store.release(device)
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
        result["removed"] = self.registry.remove(device)
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


async def serve(config: ServerConfig, stop: asyncio.Event) -> None:
    """Run the server until ``stop`` is set, then close every session with 1001."""
    spare_full_collections()
    context = tls_context(config)
    await refuse_weak_password(config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    rulebook = Rulebook(config.firewall, config.rules_file)
    async with contextlib.AsyncExitStack() as stack:
        commits = GroupCommit()
        store = LeaseStore(config.lease_file, config.pool, commits)
        stack.callback(store.close)
        tun = Tun.create(config.tun_name)
        stack.callback(tun.close)
        await tun.configure(config.interface, config.mtu)
        tun.set_offload(config.offload)

        collector = None
        if config.qoe_port is not None:
            reports = ReportStore(config.qoe_file)
            stack.callback(reports.close)
            collector = Collector(reports, lambda address: lease_owner(store, address))
            qoe = await listen(
                asyncio.start_server(
                    collector.handle,
                    str(config.address),
                    config.qoe_port,
                    ssl=context,
                    limit=MAX_REPORT + 1,
                ),
                f"{config.address}:{config.qoe_port} (QoE)",
            )
            stack.callback(qoe.close)

        registry = Registry(config.registry_file, commits)
        stack.callback(registry.close)
        stack.callback(commits.flush)  # before the stores close
        server = Server(config, store, registry, commits, tun, collector, rulebook)
        # TCP keepalive comes from the listener (listen_for_tunnels), not per connection
        runner = web.AppRunner(
            server.app(), access_log=None, handle_signals=False, tcp_keepalive=False
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        assert runner.server is not None  # set by setup()
        listener = await listen(
            listen_for_tunnels(
                server.gate.wrap(runner.server),
                config.host,
                config.port,
                context,
                config.handshake_timeout,
            ),
            f"{config.host}:{config.port}",
        )
        if config.admin is not None:
            admin_app = admin.application(
                admin.load_token(config.admin_token_file),
                server.status,
                {"unbind": server.unbind, "remove": server.remove},
                config.metrics_need_token,
                server.refusals,
            )
            admin_runner = web.AppRunner(admin_app, access_log=None, handle_signals=False)
            await admin_runner.setup()
            stack.push_async_callback(admin_runner.cleanup)
            host, port = config.admin
            await listen(web.TCPSite(admin_runner, host, port).start(), f"{host}:{port} (admin)")
        control_runner = await control.start(
            config.control_socket,
            server.status,
            {"unbind": server.unbind, "remove": server.remove},
            {"capture": capture_handler(server.router, store)},
            {"rules": server.change_rules, "flows": server.flows},
        )
        stack.push_async_callback(control_runner.cleanup)
        router = asyncio.create_task(server.router.run())
        stack.push_async_callback(cancel, router)
        sweeper = asyncio.create_task(server.router.sweep())
        stack.push_async_callback(cancel, sweeper)

        log.info(
            "server listening",
            listen=f"{config.host}:{config.port}",
            path=config.path,
            overlay=str(config.address),
            tun=tun.name,
            leases=len(store),
            qoe=config.qoe_port,
            rules=len(rulebook.ruleset.rules),
            rules_from=str(config.rules_file) if rulebook.changed else "config",
        )
        await stop.wait()
        log.info("server stopping", sessions=len(server.router.by_key))
        listener.close()
        gc.freeze()  # leaving: no need to walk every session's objects again while they close
        await server.close_sessions()
    log.info("server stopped")


async def listen_for_tunnels(
    factory: Callable[[], asyncio.Protocol],
    host: str | None,
    port: int,
    context: ssl.SSLContext,
    handshake_timeout: float,
) -> asyncio.Server:
    """The tunnels' listener, set up before it listens: the connections it accepts
    inherit TCP keepalive and the small unsent bound of the kernel's send buffer
    (bridge.UNSENT_BYTES), which spares every new tunnel the system calls that set them."""
    listener = await asyncio.get_running_loop().create_server(
        factory,
        host,
        port,
        ssl=context,
        reuse_address=True,
        backlog=LISTEN_BACKLOG,
        ssl_handshake_timeout=handshake_timeout,
        start_serving=False,
    )
    for sock in listener.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        bridge.bound_kernel_send_buffer(sock)
    await listener.start_serving()
    return listener


async def refuse_weak_password(config: ServerConfig) -> None:
    """Never run with a vendor default like "123456", unless the operator insists, loudly."""
    if config.shared is None:
        return
    weak = await asyncio.to_thread(config.shared.password_hash.well_known)
    if weak is None:
        return
    if not config.allow_weak_password:
        raise ConfigError(
            f"auth.password_hash is the hash of the well-known password {weak!r}: set a strong "
            "one (overlay hash-password), or start with auth.allow_weak_password = true"
        )
    log.warning(
        "RUNNING WITH A WELL-KNOWN TUNNEL PASSWORD: anyone can open tunnels",
        password=weak,
        setting="auth.allow_weak_password",
    )


def lease_owner(store: LeaseStore, address: ipaddress.IPv4Address) -> tuple[str, str] | None:
    lease = store.owner(address)
    return (lease.device, lease.vrf) if lease is not None else None


async def listen(starting: Awaitable[T], where: str) -> T:
    """Await a listener; a port in use or an address not here becomes one clear line."""
    try:
        return await starting
    except OSError as exc:
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
