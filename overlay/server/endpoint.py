"""The tunnel endpoint: from an HTTP request to an open session, or a counted refusal.

A tunnel request goes through, in order: the rate limit (429), the header
checks of :mod:`overlay.server.handshake` (400/426/401), the enrolment (403),
the client certificate and the credentials (401, checked off the event loop),
the enrolment and lease (503 when the pool is exhausted or the store fails).
Only then is the WebSocket upgraded, an older session of the same (device,
VRF) closed with 4001, and the hello sent. Every refusal is counted by reason
and logged once.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time

import structlog
from aiohttp import web

from overlay import bridge, identity, wire
from overlay.addressing import OVERLAY
from overlay.codel import Codel
from overlay.exceptions import PoolExhaustedError, StoreError
from overlay.server.auth import Checker, Credentials, PasswordHash
from overlay.server.budget import TokenBucket
from overlay.server.handshake import Refusal, TunnelRequest, check_request
from overlay.server.node import Node
from overlay.server.ratelimit import FailureLimiter
from overlay.server.registry import Enrollment
from overlay.server.sessions import ServerSession

log = structlog.get_logger("overlay.server")


class Endpoint:
    """Serves the tunnel path (``/tun``) of one node."""

    def __init__(self, node: Node) -> None:
        config = node.config
        self.node = node
        self.config = config
        self.checker = Checker()
        self.limiter = FailureLimiter(config.max_failures, config.failure_window, config.lockout)
        self._checks: dict[bytes, asyncio.Future[bool]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.config.path, self.handle_tunnel)
        return app

    def _refuse(self, request: web.Request, refusal: Refusal, device: str = "") -> web.Response:
        self.node.refusals[refusal.reason] += 1
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
        node, source, now = self.node, request.remote or "?", time.monotonic()
        wait = self.limiter.retry_after(source, now)
        if wait > 0:
            node.refusals["rate-limited"] += 1
            return web.Response(
                status=429,
                text="too many failed attempts from this address\n",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        checked = check_request(request.headers)
        if isinstance(checked, Refusal):
            return self._refuse(request, checked, request.headers.get(wire.HEADER_DEVICE, ""))
        enrollment = node.registry.get(checked.device)
        if enrollment is None and not self.config.auto_enroll:
            self._failed(source, now)  # scanning for device ids counts like guessing
            return self._refuse(
                request, Refusal(403, "not-enrolled", "device not enrolled"), checked.device
            )
        if enrollment is not None and enrollment.client_cert:
            transport = request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            names = identity.certificate_names(peercert)
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
                node.registry.add(checked.device, None)
            lease = node.store.lease(checked.device, checked.vrf)
            await node.commits.wait()  # durable before the hello announces it
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

        config, limits = self.config, self.config.firewall.limits
        ws = web.WebSocketResponse(
            protocols=(wire.SUBPROTOCOL,),
            autoping=False,
            compress=False,
            max_msg_size=config.max_message,
            writer_limit=0,  # wait for the transport after every frame (bridge.UNSENT_BYTES)
        )
        await ws.prepare(request)
        node.gate.settled(request.transport)
        bridge.bound_send_buffers(request.transport, inherited=True)  # listen_for_tunnels
        session = ServerSession(
            ws,
            lease,
            source,
            secrets.token_hex(8),
            config.queue_bytes,
            config.max_message,
            config.ping_interval,
            config.keepalive_misses,
            Codel(config.queue_target, config.queue_interval),
            TokenBucket(limits.refused_rate, limits.refused_burst, time.monotonic()),
            node.refusals,
            offload=config.offload and checked.offload,
        )
        previous = node.opened(session)
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
            await session.run(node.router, hello)
        finally:
            node.ended(session)
        return ws
