"""The tunnel endpoint: from an HTTP request to an open session, or a counted refusal.

A tunnel request goes through, in order: the rate limit (429, unless the
request carries credentials this server accepted before: someone else's
guesses from behind the same NAT do not lock a device out), the header checks
of :mod:`overlay.server.handshake` (400/426/401), the credentials and the
client certificate (one and the same 401 for a wrong password, an unknown id
and a missing certificate, after the same scrypt check: no oracle for which ids
are enrolled), the enrolment (403, only after valid credentials), the VRF limit
(403), the takeover limit (429), the enrolment and lease (503 when the pool is
exhausted or the store fails). Only then is the WebSocket upgraded (the 101 is
ours, and the connection is handed from aiohttp to the session:
:mod:`overlay.server.sessions`), an older session of the same (device, VRF)
closed with 4001, and the hello sent. Every
refusal is counted by reason and logged once.

Credentials are checked by scrypt in a pool of ``SCRYPT_THREADS`` threads with
at most ``SCRYPT_WAITING`` checks waiting (beyond: 503, ``auth-busy``), one
check at a time per source address, and the checks under way count against
that address's failures: a flood of guesses costs the guessers time, and
cannot starve the logins of others.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiohttp import web

from overlay import identity, wire
from overlay.addressing import OVERLAY
from overlay.codel import Codel
from overlay.exceptions import PoolExhaustedError, StoreError, VrfLimitError
from overlay.server import handshake
from overlay.server.auth import Checker, Credentials, PasswordHash, hash_password
from overlay.server.budget import TokenBucket
from overlay.server.handshake import Refusal, TunnelRequest, check_request
from overlay.server.node import Node
from overlay.server.ratelimit import FailureLimiter
from overlay.server.registry import Enrollment
from overlay.server.relay import Relay
from overlay.server.sessions import ServerSession

SECURE_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

log = structlog.get_logger("overlay.server")
SCRYPT_THREADS = 2  # each scrypt holds 16 MiB while it runs
SCRYPT_WAITING = 64  # checks that may wait for a thread; more are refused (auth-busy)
# Takeovers of one (device, VRF): three at once, then one a minute. A device that moved
# takes its tunnel over once; two that claim one id would take it from each other forever.
TAKEOVER_RATE, TAKEOVER_BURST = 1 / 60, 3
LOG_EVERY = 1.0  # seconds between two log lines of one kind of refusal
# A device this node has not seen while the store is unreachable: neither its enrolment
# nor a new lease can be had; the store's client reconnects in the background.
STORE_UNAVAILABLE = Refusal(
    503, "store-unavailable", "the server cannot reach its store; try later"
)
RETRY_STORE = 5  # seconds
# Every credential refusal says the same, whatever was wrong (the counters say what was).
BAD_CREDENTIALS = "bad username, password or client certificate"


class AuthBusy(Exception):
    """Too many credential checks are waiting already."""


class _Turn:
    """A source's lock for its credential checks, and how many hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Endpoint:
    """Serves the tunnel path (``/tun``) of one node."""

    def __init__(self, node: Node) -> None:
        config = node.config
        self.node = node
        self.config = config
        self.checker = Checker()
        self.limiter = FailureLimiter(config.max_failures, config.failure_window, config.lockout)
        self._checks: dict[bytes, asyncio.Future[bool]] = {}
        # what an id that has no credentials is checked against: a password nobody knows
        self._nobody = Credentials("", PasswordHash.parse(hash_password(secrets.token_hex(16))))
        self._scrypt = ThreadPoolExecutor(SCRYPT_THREADS, thread_name_prefix="scrypt")
        self._waiting = 0  # checks waiting for or running in the pool
        self._turns: dict[str, _Turn] = {}  # one check at a time per source
        self._takeovers: dict[tuple[str, str], TokenBucket] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # by reason: last line, refusals since
        self.relay: Relay | None = None  # a worker's: the others hear of each failed login

    def close(self) -> None:
        self._scrypt.shutdown(wait=False, cancel_futures=True)

    async def forget(self, interval: float = 10.0) -> None:
        """Age the failure tables on a timer, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self.limiter.forget_old(now)
            for key, bucket in list(self._takeovers.items()):
                if bucket.spend(0, now) and bucket.tokens >= bucket.burst:
                    del self._takeovers[key]  # full again: as if it had never been used

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.config.path, self.handle_tunnel)
        app.on_response_prepare.append(self._secure_headers)
        return app

    @staticmethod
    async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
        """What a browser that lands on the tunnel port is told: HTTPS only, nothing to
        render or frame (TLS scanners such as testssl.sh check for these)."""
        response.headers.update(SECURE_HEADERS)

    def _refuse(
        self,
        request: web.Request,
        refusal: Refusal,
        device: str = "",
        retry_after: int | None = None,
    ) -> web.Response:
        self.node.refusals[refusal.reason] += 1
        now = time.monotonic()
        last, unlogged = self._logged.get(refusal.reason, (float("-inf"), 0))
        if now - last >= LOG_EVERY:  # a flood of refusals is one line a second, with a count
            self._logged[refusal.reason] = (now, 0)
            log.warning(
                "tunnel refused",
                status=refusal.status,
                reason=refusal.reason,
                peer=request.remote,
                device=device or None,
                **({"not_logged_since": unlogged} if unlogged else {}),
            )
        else:
            self._logged[refusal.reason] = (last, unlogged + 1)
        headers = {}
        if refusal.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="overlay"'
        elif refusal.status == 426:
            headers["Sec-WebSocket-Protocol"] = wire.SUBPROTOCOL
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return web.Response(status=refusal.status, text=refusal.message + "\n", headers=headers)

    def expected(self, enrollment: Enrollment | None) -> Credentials | None:
        """A device's own credentials (its id and password), else the shared ones, if any."""
        if enrollment is not None and enrollment.password_hash is not None:
            return Credentials(enrollment.device, PasswordHash.parse(enrollment.password_hash))
        return self.config.shared

    async def _authenticate(
        self, expected: Credentials, request: TunnelRequest, source: str
    ) -> bool:
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
            if self._waiting >= SCRYPT_WAITING:
                raise AuthBusy
            pending = asyncio.ensure_future(self._check(source, expected, username, password, key))
            self._checks[key] = pending
            pending.add_done_callback(lambda _: self._checks.pop(key, None))
        return await asyncio.shield(pending)

    async def _check(
        self, source: str, expected: Credentials, username: str, password: str, key: bytes
    ) -> bool:
        self._waiting += 1
        try:
            async with self._turn(source):
                return await asyncio.get_running_loop().run_in_executor(
                    self._scrypt, self.checker.check, expected, username, password, key
                )
        finally:
            self._waiting -= 1

    @contextlib.asynccontextmanager
    async def _turn(self, source: str) -> AsyncIterator[None]:
        """One credential check at a time for ``source``."""
        turn = self._turns.setdefault(source, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:  # nobody holds it or waits for it: forget the source
                del self._turns[source]

    async def _accepted_before(self, request: web.Request) -> bool:
        """Whether the request carries credentials this server accepted before."""
        checked = check_request(request.headers)
        if isinstance(checked, Refusal):
            return False
        try:
            enrollment = await self.node.store.enrollment(checked.device)
        except StoreError:
            return False
        expected = self.expected(enrollment)
        return expected is not None and self.checker.remembered(
            self.checker.token(expected, checked.username, checked.password)
        )

    def _failed(self, source: str, now: float) -> None:
        if self.relay is not None:
            self.relay.failed(source)
        if self._locks_out(source, now):
            log.warning(
                "address locked out after failed logins", peer=source, lockout=self.config.lockout
            )

    def failed_elsewhere(self, source: str) -> None:
        """Another worker of this server refused ``source``'s credentials: count it here too."""
        self._locks_out(source, time.monotonic())

    def _locks_out(self, source: str, now: float) -> bool:
        """Count a failure of ``source``; whether it locks the source out."""
        locked = self.limiter.failed(source, now)
        if locked:
            self.limiter.forget_old(now)
        return locked

    async def handle_tunnel(self, request: web.Request) -> web.StreamResponse:
        node, source, now = self.node, request.remote or "?", time.monotonic()
        wait = self.limiter.retry_after(source, now)
        if wait > 0 and not await self._accepted_before(request):
            node.refusals["rate-limited"] += 1
            return web.Response(
                status=429,
                text="too many failed attempts from this address\n",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        checked = check_request(request.headers)
        if isinstance(checked, Refusal):
            return self._refuse(request, checked, request.headers.get(wire.HEADER_DEVICE, ""))
        try:
            enrollment = await node.store.enrollment(checked.device)
        except StoreError:  # and this node has not seen the device: it cannot be checked
            return self._refuse(request, STORE_UNAVAILABLE, checked.device, retry_after=RETRY_STORE)
        # No oracle: whether the id is enrolled, and whether it needs a certificate, shows
        # only after valid credentials; until then every refusal is the same 401, after
        # the same scrypt (against a password nobody has, when there is nothing to check).
        expected = self.expected(enrollment) or self._nobody
        self.limiter.checking(source)
        try:
            accepted = await self._authenticate(expected, checked, source)
        except AuthBusy:
            return self._refuse(
                request,
                Refusal(503, "auth-busy", "the server is busy checking credentials; try later"),
                checked.device,
                retry_after=1,
            )
        finally:
            self.limiter.checked(source)
        reason = "bad-credentials"
        if accepted and enrollment is not None and enrollment.client_cert:
            transport = request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            if checked.device not in identity.certificate_names(peercert):
                accepted, reason = False, "client-certificate"
        if not accepted:
            self._failed(source, now)
            return self._refuse(request, Refusal(401, reason, BAD_CREDENTIALS), checked.device)
        if enrollment is None and not self.config.auto_enroll:
            self._failed(source, now)  # scanning for device ids counts like guessing
            return self._refuse(
                request, Refusal(403, "not-enrolled", "device not enrolled"), checked.device
            )
        key = (checked.device, checked.vrf)
        if key in node.router.by_key:
            bucket = self._takeovers.setdefault(
                key, TokenBucket(TAKEOVER_RATE, TAKEOVER_BURST, now)
            )
            if not bucket.spend(1, now):
                return self._refuse(
                    request,
                    Refusal(429, "takeover-limit", "this tunnel was taken over too often"),
                    checked.device,
                    retry_after=math.ceil(1 / TAKEOVER_RATE),
                )
        cap = self.config.max_vrfs if enrollment is None else enrollment.max_vrfs
        try:  # durable before the hello announces it
            lease = await node.store.lease(
                checked.device,
                checked.vrf,
                self.config.max_vrfs if cap is None else cap,
                enroll=enrollment is None,
            )
        except VrfLimitError as exc:
            return self._refuse(request, Refusal(403, "vrf-limit", str(exc)), checked.device)
        except PoolExhaustedError as exc:
            return self._refuse(request, Refusal(503, "pool-exhausted", str(exc)), checked.device)
        except StoreError as exc:
            if not node.store.status()["up"]:  # the store logged the outage once
                return self._refuse(
                    request, STORE_UNAVAILABLE, checked.device, retry_after=RETRY_STORE
                )
            log.error("cannot store the enrolment or lease", device=checked.device, error=str(exc))
            return self._refuse(
                request,
                Refusal(503, "store-error", "the server cannot store the lease; try later"),
                checked.device,
                retry_after=RETRY_STORE,
            )
        if enrollment is None:
            log.info("device enrolled automatically", device=checked.device, peer=source)

        config, limits = self.config, self.config.firewall.limits
        transport = request.transport
        if transport is None or transport.is_closing():  # the device gave up meanwhile
            return web.Response()
        session = ServerSession(
            node.router,
            node.ended,
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
        transport.write(handshake.switching_protocols(checked.key, SECURE_HEADERS))
        node.gate.settled(transport)
        previous = node.opened(session)
        early = hand_over(request)
        session.take(transport, early)
        if previous is not None:
            if previous.peer != source:  # a device that moved, or one that claims its id
                node.refusals["takeover-other-peer"] += 1
                log.warning(
                    "tunnel taken over from another address",
                    device=checked.device,
                    vrf=checked.vrf,
                    peer=source,
                    previous_peer=previous.peer,
                )
            # The older one has CLOSE_WAIT to answer; this one need not wait for that.
            previous.begin_close(wire.CloseCode.REPLACED, "replaced by a newer session")
        session.open(
            wire.Hello(
                address=str(lease.address),
                prefix=OVERLAY.prefixlen,
                server=str(config.address),
                mtu=config.mtu,
                ping_interval=config.ping_interval,
                max_message=config.max_message,
                session=session.id,
                offload=session.offload,
                routes=node.lan_routes,
            )
        )
        return web.Response()  # written nowhere: the connection is the session's now


class _Tail:
    """Takes, as aiohttp's parser after an upgrade would, what followed the request."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


def hand_over(request: web.Request) -> bytes:
    """Take the connection away from aiohttp, for a session to serve: aiohttp's handler
    forgets it (it writes nothing more and closes nothing), and its request ends with
    this handler. Return what the device sent after the request."""
    handler = request.protocol
    tail = _Tail()
    handler.set_parser(tail)  # type: ignore[arg-type]  # hands over what it holds
    handler.transport = None
    handler.connection_lost(None)  # out of the server's connections, nothing closed
    return tail.data
