"""One tunnel from this device to the overlay: connect, hello, bridge, keepalive, reconnect.

Theory of operation. The agent creates its TUN at start (so a missing
permission is reported at once), then loops: try the servers in failover
order; on a hello, give the TUN the leased address and MTU and bridge packets
until the connection ends; then wait a jittered backoff and try again. The TUN
and its address stay in place across reconnects, so local applications never
see the address vanish. States and their changes::

    CONNECTING --hello--> UP --connection lost--> BACKOFF --wait over--> CONNECTING
         |                                          ^
         +---------------attempt failed-------------+
    (any) --stop--> STOPPED

Each change of state is logged once, with the reason.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import os
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
import yarl

from appliance.config import ApplianceConfig, VrfConfig
from appliance.dhcp import DhcpValues, LeaseWatcher
from appliance.exceptions import CertificateError, ConnectError, RefusedError, UnreachableError
from appliance.failover import After, ServerOrder, after_close, after_refusal, backoff
from appliance.hooks import run as hooks_run
from appliance.tls import PinMismatchError, client_tls
from appliance.vrf import Backend
from overlay import bridge, wire
from overlay.codel import Codel
from overlay.counters import Counters
from overlay.exceptions import HelloError, TunError
from overlay.keepalive import Keepalive
from overlay.status import TunnelStatus
from overlay.tun import Tun

HELLO_TIMEOUT = 10.0
MAX_RECEIVE = 16 << 20  # the largest max_message a server may announce

REFUSALS = {
    400: "the server found the request malformed",
    401: "the server refused the credentials of user {user!r}; check username and password "
    "(and the client certificate, if the device is enrolled with --require-cert)",
    403: "the server refused device {device!r}: not enrolled, or unbound",
    404: "the server has no tunnel endpoint at {path}; check the path in the URL",
    426: "the server does not speak protocol " + wire.SUBPROTOCOL,
    429: "the server refused: too many failed attempts from this address",
    503: "the server has no free overlay address",
}


class TunnelState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    BACKOFF = "backoff"
    STOPPED = "stopped"


def explain(
    exc: BaseException, url: str, vrf: VrfConfig, device_id: str, proxy: str | None = None
) -> ConnectError:
    """Turn what aiohttp raised into one sentence an operator can act on."""
    target = yarl.URL(url)
    where = f"{target.host}:{target.port}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        hint = "; check proxy.username and its password" if exc.status == 407 else ""
        return UnreachableError(
            f"{url}: the proxy {proxy} refused to connect to {where} (HTTP {exc.status}){hint}"
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        errno = exc.os_error.errno
        reason = os.strerror(errno).lower() if errno else str(exc.os_error)
        return UnreachableError(f"{url}: cannot connect to the proxy {proxy}: {reason}")
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        template = REFUSALS.get(exc.status, "the server refused the tunnel")
        message = template.format(user=vrf.username, device=device_id, path=target.path)
        return RefusedError(f"{url}: {message} (HTTP {exc.status})", exc.status)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError) and isinstance(
        exc.certificate_error, PinMismatchError
    ):
        return CertificateError(
            f"{url}: {exc.certificate_error}; if the server's key changed on purpose, add its "
            "pin (overlay certs pin server.pem)"
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        name = vrf.server_name or target.host
        reason = getattr(exc.certificate_error, "verify_message", None) or str(
            exc.certificate_error
        )
        ca = vrf.ca_file or "the system trust store"
        return CertificateError(
            f"{url}: the server certificate did not verify for {name!r}: {reason} (trusting {ca})"
        )
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return UnreachableError(f"{url}: TLS handshake with {where} failed: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        reason = os.strerror(errno).lower() if errno else str(exc.os_error)
        return UnreachableError(f"{url}: cannot connect to {where}: {reason}")
    if isinstance(exc, TimeoutError):
        return UnreachableError(f"{url}: no answer from {where} in time")
    if isinstance(exc, HelloError):
        return ConnectError(f"{url}: {exc}")
    return UnreachableError(f"{url}: connection failed: {exc or type(exc).__name__}")


@dataclass(frozen=True)
class Ended:
    """How an open tunnel ended."""

    reason: str
    code: int | None = None  # the close code the server sent, if it sent one
    local: bool = False  # this device ended it (stopping, or new DHCP values)


def lost_because(
    receiving: asyncio.Task[aiohttp.WSMessage],
    sending: asyncio.Task[None],
    pinging: asyncio.Task[None],
    timeout: float,
) -> Ended:
    """Why an open tunnel ended, from whichever of its loops ended first."""
    for task in (receiving, sending):
        if task.done() and not task.cancelled() and task.exception() is not None:
            return Ended(f"connection failed: {task.exception()}")
    if receiving.done() and not receiving.cancelled():
        last = receiving.result()
        code = last.data if last.type is aiohttp.WSMsgType.CLOSE else None
        return Ended(closed_because(last.type, last.data, last.extra), code)
    if pinging.done() and not pinging.cancelled():
        return Ended(f"server silent for {timeout:.0f} s")
    return Ended("connection closed")


def closed_because(kind: aiohttp.WSMsgType, code: object, reason: object) -> str:
    """Why the server ended the tunnel, from the message that ended the receive loop."""
    if kind is aiohttp.WSMsgType.CLOSE and isinstance(code, int):
        known: dict[int, str] = {
            wire.CloseCode.GOING_AWAY: "server going away",
            wire.CloseCode.REPLACED: "replaced by a newer session of this device",
            wire.CloseCode.REMOVED: "device removed or unbound on the server",
        }
        if code in known:
            return f"{known[code]} ({code})"
        return f"server closed the tunnel ({code}{f': {reason}' if reason else ''})"
    if kind is aiohttp.WSMsgType.ERROR:
        return f"connection failed: {code}"
    return "connection closed without a close frame"


def dhcp_url(server: str, configured: str) -> str:
    """The tunnel URL for a server name from DHCP: a URL as is, or a host on the configured path."""
    if "://" in server:
        return server
    return str(
        yarl.URL(configured)
        .with_host(server.partition(":")[0])
        .with_port(int(server.partition(":")[2]) if server.partition(":")[2].isdigit() else None)
    )


@dataclass(frozen=True)
class RefusedVrf:
    """A VRF that cannot run on this host (``refused``), or whose namespace or device does
    not exist yet (``waiting``: the agent keeps looking); shown with its reason."""

    vrf: VrfConfig
    backend: str
    reason: str
    state: str = "refused"

    def status(self) -> TunnelStatus:
        return {
            "device": None,
            "vrf": self.vrf.name,
            "backend": self.backend,
            "state": self.state,
            "since": time.time(),
            "server": None,
            "address": None,
            "tun": None,
            "offload": False,
            "last_error": self.reason,
            "servers": list(self.vrf.urls),
            "failovers": 0,
            **Counters().as_dict(),
        }


def management_routes(
    routes: tuple[str, ...], overlay: ipaddress.IPv4Interface, server: str | None
) -> tuple[frozenset[ipaddress.IPv4Network], list[tuple[str, str]]]:
    """The pushed routes this device may take, and those it refuses with why: one that
    holds the server it talks to (the tunnel would carry itself) or overlaps the overlay."""
    keep, refused = set(), []
    for text in routes:
        network = ipaddress.IPv4Network(text)  # the hello's parser checked it
        if server is not None and ipaddress.ip_address(server) in network:
            refused.append((text, f"it holds the server's address {server}"))
        elif network.overlaps(overlay.network):
            refused.append((text, "it overlaps the overlay"))
        else:
            keep.add(network)
    return frozenset(keep), refused


class DeviceTunnel:
    """The device's tunnel for one VRF, kept up until stopped."""

    def __init__(self, config: ApplianceConfig, vrf: VrfConfig, tun: Tun, backend: Backend) -> None:
        self.config = config
        self.vrf = vrf
        self.tun = tun
        self.backend = backend
        self.resolver = backend.resolver()
        self.tls = client_tls(vrf)
        self.dhcp = (
            LeaseWatcher(config.dhcp_lease_file, config.dhcp_format)
            if config.dhcp_lease_file is not None
            else None
        )
        if self.dhcp is not None:
            self.dhcp.read()
        self.urls, self.password = self._settings()
        self.order = ServerOrder(self.urls)
        self.state = TunnelState.CONNECTING
        self.since = time.time()
        self.server: str | None = None
        self.failovers = 0
        self.hello: wire.Hello | None = None
        self.last_error: str | None = None
        self.counters = Counters()
        self._reconfigure = asyncio.Event()
        self._hooks: asyncio.Task[None] | None = None  # the last hook run started
        self.log = structlog.get_logger("appliance.tunnel").bind(
            device=config.device_id, vrf=vrf.name
        )

    def _settings(self) -> tuple[list[str], str]:
        """Servers and password: DHCP options 253 and 252 win over the config file."""
        vrf = self.vrf
        values = DhcpValues(None, None)
        if self.dhcp is not None and not vrf.own_servers:
            values = self.dhcp.values
        urls = [dhcp_url(values.server, vrf.urls[0])] if values.server else list(vrf.urls)
        return urls, values.password or vrf.password

    def _enter(self, state: TunnelState, **why: Any) -> None:
        if state is not self.state:
            was_up = self.state is TunnelState.UP
            self.state = state
            self.since = time.time()
            self.log.info("tunnel " + state.value, **why)
            if state is TunnelState.UP or was_up:
                self._hook("up" if state is TunnelState.UP else "down")

    def _hook(self, event: str) -> None:
        """Run the up or down hook, in order with the others of this tunnel."""
        hooks = self.config.hooks
        argv = hooks.up if event == "up" else hooks.down
        if not argv:
            return
        hello = self.hello
        environment = {
            "OVERLAY_EVENT": event,
            "OVERLAY_DEVICE": self.config.device_id,
            "OVERLAY_VRF": self.vrf.name,
            "OVERLAY_ADDRESS": hello.address if hello else "",
            "OVERLAY_PREFIX": str(hello.prefix) if hello else "",
            "OVERLAY_TUN": self.tun.name,
            "OVERLAY_NETNS": self.backend.netns or "",
            "OVERLAY_SERVER": self.server or "",
        }
        previous = self._hooks

        async def in_turn() -> None:
            if previous is not None:
                await previous
            await hooks_run(argv, environment, hooks.timeout)

        self._hooks = asyncio.create_task(in_turn())

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the tunnel up until ``stop`` is set."""
        watcher = asyncio.create_task(self._watch_dhcp()) if self.dhcp is not None else None
        try:
            await self._keep_up(stop)
        finally:
            if watcher is not None:
                watcher.cancel()
            if self.resolver is not None:
                await self.resolver.close()
        self._enter(TunnelState.STOPPED)
        if self._hooks is not None:
            await self._hooks  # the down hook ends before the agent does

    async def _keep_up(self, stop: asyncio.Event) -> None:
        delays = backoff(self.config.min_delay, self.config.max_delay)
        while not stop.is_set():
            if self._reconfigure.is_set():
                self._reconfigure.clear()
                self.urls, self.password = self._settings()
                self.order = ServerOrder(self.urls)
            after = After.BACKOFF
            for url in self.order.round():
                self._enter(TunnelState.CONNECTING, server=url)
                try:
                    ended = await self._connect(url, stop)
                except ConnectError as exc:
                    self.last_error = str(exc)
                    self.log.warning("tunnel attempt failed", error=str(exc))
                    if isinstance(exc, RefusedError) and after_refusal(exc.status) is After.LONGEST:
                        after = After.LONGEST
                    continue
                delays = backoff(self.config.min_delay, self.config.max_delay)  # it was up
                after = After.AT_ONCE if ended.local else after_close(ended.code)
                if not ended.local:
                    self.last_error = ended.reason
                    self.log.warning("tunnel lost", reason=ended.reason, then=after.value)
                break
            if stop.is_set() or after is After.AT_ONCE:
                continue
            delay = self.config.max_delay if after is After.LONGEST else next(delays)
            self._enter(TunnelState.BACKOFF, retry_in=round(delay, 2))
            waits = [
                asyncio.create_task(stop.wait()),
                asyncio.create_task(self._reconfigure.wait()),
            ]
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()

    async def _watch_dhcp(self) -> None:
        """Rebuild the tunnel when the DHCP lease brings other values; leave it alone otherwise."""
        assert self.dhcp is not None
        while True:
            await asyncio.sleep(self.config.dhcp_poll)
            if self.dhcp.read() and self._settings() != (self.urls, self.password):
                self.log.info(
                    "new server or password from DHCP, reconnecting",
                    server=self.dhcp.values.server,
                    password_from_dhcp=self.dhcp.values.password is not None,
                )
                self._reconfigure.set()

    def _proxy(self) -> tuple[str | None, aiohttp.BasicAuth | None]:
        config = self.config
        proxy = config.proxy
        if proxy is None and config.proxy_from_environment:
            proxy = urllib.request.getproxies().get("https")
        auth = None
        if config.proxy_username is not None and config.proxy_password is not None:
            auth = aiohttp.BasicAuth(config.proxy_username, config.proxy_password)
        return proxy, auth

    async def _connect(self, url: str, stop: asyncio.Event) -> Ended:
        """One connection, bridged until it ends; raises ConnectError when it never came up."""
        config = self.config
        timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout)
        proxy, proxy_auth = self._proxy()
        try:
            connector = aiohttp.TCPConnector(
                resolver=self.resolver,
                socket_factory=self.backend.socket_factory(),
                local_addr=(self.vrf.source, 0) if self.vrf.source else None,
            )
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                ws = await asyncio.wait_for(
                    http.ws_connect(
                        url,
                        protocols=(wire.SUBPROTOCOL,),
                        headers={
                            wire.HEADER_DEVICE: config.device_id,
                            wire.HEADER_VRF: self.vrf.name,
                            **({wire.HEADER_OFFLOAD: wire.OFFLOAD_VNET} if config.offload else {}),
                        },
                        auth=aiohttp.BasicAuth(self.vrf.username, self.password),
                        ssl=self.tls,
                        server_hostname=self.vrf.server_name,
                        proxy=proxy,
                        proxy_auth=proxy_auth,
                        autoping=False,
                        compress=0,
                        max_msg_size=MAX_RECEIVE,
                    ),
                    config.connect_timeout,
                )
                async with ws:
                    bridge.wait_for_transport_after_every_frame(ws)
                    bridge.bound_send_buffers(ws._writer.transport)
                    hello = await self._receive_hello(ws)
                    if self.server is not None and url != self.server:
                        self.failovers += 1
                    self.order.connected(url)
                    return await self._bridge(ws, url, hello, stop)
        except TunError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, HelloError) as exc:
            raise explain(exc, url, self.vrf, config.device_id, proxy) from None

    def _route_management(
        self, hello: wire.Hello, address: ipaddress.IPv4Interface, peer: Any
    ) -> None:
        """Route the management LAN the hello names into the TUN, so that replies to flows
        opened from it come back through the tunnel (docs/protocol.md, "Routes")."""
        if self.backend.kind == "vrf" and hello.routes:
            self.log.warning(
                "the server names management routes; the vrf backend does not install them",
                routes=list(hello.routes),
            )
            return
        keep, refused = management_routes(hello.routes, address, peer[0] if peer else None)
        for network, why in refused:
            self.log.warning("management route refused", route=network, reason=why)
        try:
            self.tun.route(keep)
        except TunError as exc:
            self.log.error("cannot route the management LAN into the tunnel", error=str(exc))

    async def _receive_hello(self, ws: aiohttp.ClientWebSocketResponse) -> wire.Hello:
        message = await ws.receive(timeout=HELLO_TIMEOUT)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise HelloError(f"expected a hello, got a {message.type.name.lower()} message")
        return wire.Hello.parse(message.data)

    async def _bridge(
        self, ws: aiohttp.ClientWebSocketResponse, url: str, hello: wire.Hello, stop: asyncio.Event
    ) -> Ended:
        address = ipaddress.IPv4Interface(f"{hello.address}/{hello.prefix}")
        if self.hello is not None and self.hello.address != hello.address:
            self.log.warning("overlay address changed", old=self.hello.address, new=hello.address)
        await self.tun.configure(address, hello.mtu, self.config.tun_queue_length)
        self.tun.set_offload(hello.offload)
        self._route_management(hello, address, ws._writer.transport.get_extra_info("peername"))
        self.hello, self.server, self.last_error = hello, url, None
        self._enter(TunnelState.UP, server=url, address=hello.address, session=hello.session)
        if self.vrf.insecure:
            self.log.warning(
                "SERVER CERTIFICATE NOT VERIFIED (server.insecure = true): anyone "
                "on the path can impersonate the server",
                server=url,
            )
        keepalive = Keepalive(
            self.config.keepalive_interval or hello.ping_interval, self.config.keepalive_misses
        )
        receiving = asyncio.create_task(
            bridge.receive(
                ws,
                lambda frame: bridge.deliver(frame, self.tun, self.counters, hello.offload),
                keepalive,
                self.counters,
            )
        )
        codel = Codel(self.config.queue_target, self.config.queue_interval)
        sender = bridge.Sender(self.config.queue_bytes, hello.max_message, self.counters, codel)
        sending = asyncio.create_task(bridge.pump(self.tun, ws, sender))
        pinging = asyncio.create_task(bridge.keep_alive(ws, keepalive))
        stopping = asyncio.create_task(stop.wait())
        reconfiguring = asyncio.create_task(self._reconfigure.wait())
        tasks = (receiving, sending, pinging, stopping, reconfiguring)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task, why in ((stopping, "device stopping"), (reconfiguring, "device reconfigured")):
            if task.done() and not task.cancelled():
                await ws.close(code=wire.CloseCode.NORMAL, message=why.encode())
                return Ended(why, local=True)
        return lost_because(receiving, sending, pinging, keepalive.timeout)

    def status(self) -> TunnelStatus:
        return {
            "device": self.config.device_id,
            "vrf": self.vrf.name,
            "backend": self.backend.describe(),
            "state": self.state.value,
            "since": self.since,
            "server": self.server,
            "address": self.hello.address if self.hello else None,
            "tun": self.tun.name,
            "offload": self.tun.offload,
            "last_error": self.last_error,
            "servers": self.urls,
            "failovers": self.failovers,
            **self.counters.as_dict(),
        }
