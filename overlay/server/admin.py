"""The admin listener: a JSON API (token required) and Prometheus metrics, on localhost by default.

    GET  /api/v1/status                  sessions, leases, counters (as ``overlay status --json``)
    POST /api/v1/devices/{id}/unbind     close its tunnels (4003), release its leases
    POST /api/v1/devices/{id}/remove     the same, and un-enroll it
    POST /api/v1/reload                  reload the certificate, key and CRL (as SIGHUP)
    GET  /metrics                        Prometheus text format (no token unless configured)
    GET  /openapi.json                   this API, described
    GET  /#token=TOKEN                   the status page (refreshes itself every 2 s)

The token is a random secret the server writes once, mode 0600, to
``admin.token_file`` (``STATE_DIR/admin-token`` by default); clients send it as
``Authorization: Bearer TOKEN``. A wrong or missing token is 401 and counted.

Every request must name the listener by an address, ``localhost``, or one of
``admin.names`` in its Host header; any other is 421 and counted
(``admin-host``). A web page that an operator's browser opened cannot then read
``/metrics`` through a name it made point at the listener (DNS rebinding).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yarl
from aiohttp import web

from overlay import certs
from overlay.control import resolve
from overlay.exceptions import ConfigError
from overlay.server import metrics
from overlay.server.config import ServerConfig
from overlay.server.listener import listen
from overlay.status import CertificateStatus, ServerStatus

Action = Callable[[str], Awaitable[dict[str, Any]]]
# A server answers at once; a supervisor of workers (overlay.server.workers) asks them first.
StatusSource = Callable[[], ServerStatus | Awaitable[ServerStatus]]
Reload = Callable[[], CertificateStatus | Awaitable[CertificateStatus]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The status page: static, served without the token; its script asks the API with the
# token the operator puts in the URL fragment (/#token=…), never sent to the server.
PAGE = Path(__file__).with_name("status.html")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "overlay admin API", "version": "1"},
    "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    "security": [{"token": []}],
    "paths": {
        "/api/v1/status": {
            "get": {
                "summary": "Sessions, leases, refusals, drops and traffic totals",
                "responses": {
                    "200": {"description": "the status, as `overlay status --json`"},
                    "401": {"description": "missing or wrong token"},
                },
            }
        },
        **{
            f"/api/v1/devices/{{device}}/{action}": {
                "post": {
                    "summary": summary,
                    "parameters": [
                        {
                            "name": "device",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": result},
                        "401": {"description": "missing or wrong token"},
                    },
                }
            }
            for action, summary, result in (
                (
                    "unbind",
                    "Close the device's tunnels (4003) and release its leases",
                    "what was closed and released",
                ),
                (
                    "remove",
                    "Unbind the device and take it out of the registry",
                    "what was closed, released and removed",
                ),
            )
        },
        "/api/v1/reload": {
            "post": {
                "summary": "Reload the certificate, its key and the device CRL (as SIGHUP); "
                "tunnels stay up, new handshakes use what was loaded",
                "responses": {
                    "200": {"description": "the certificate now in use"},
                    "401": {"description": "missing or wrong token"},
                    "422": {
                        "description": "the files were refused (`last_error` says why); "
                        "the certificate in use stays"
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {"200": {"description": "text format 0.0.4"}},
            }
        },
    },
}


async def start(
    config: ServerConfig,
    status: StatusSource,
    actions: dict[str, Action],
    refusals: Counter[str],
    reload: Reload,
) -> web.AppRunner:
    """The admin listener of ``config.admin``, listening (ConfigError naming the address
    when it cannot)."""
    assert config.admin is not None
    app = application(
        load_token(config.admin_token_file),
        status,
        actions,
        config.metrics_need_token,
        refusals,
        config.admin_names,
        reload,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = config.admin
    try:
        await listen(web.TCPSite(runner, host, port).start(), f"{host}:{port} (admin)")
    except ConfigError:
        await runner.cleanup()
        raise
    return runner


def load_token(path: Path) -> str:
    """The admin token, made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        certs.write_private(path, (secrets.token_urlsafe(32) + "\n").encode())
    return path.read_text().strip()


def named_here(host: str | None, names: frozenset[str]) -> bool:
    """Whether a Host header names this listener: an address, localhost, or ``names``."""
    try:
        name = (yarl.URL(f"http://{host}/").host or "").strip("[]").lower() if host else ""
    except ValueError:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name == "localhost" or name in names
    return True


def application(
    token: str,
    status: StatusSource,
    actions: dict[str, Action],
    metrics_need_token: bool,
    refusals: Counter[str],
    names: frozenset[str] = frozenset(),
    reload: Reload | None = None,
) -> web.Application:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def host_named(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not named_here(request.headers.get("Host"), names):
            refusals["admin-host"] += 1
            return web.json_response(
                {"error": "this listener answers to its address, localhost and admin.names"},
                status=421,
            )
        return await handler(request)

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, expected):
            return True
        refusals["admin-token"] += 1
        return False

    def refuse() -> web.Response:
        return web.json_response(
            {"error": "missing or wrong token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="overlay-admin"'},
        )

    async def get_status(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse()
        return web.json_response(await resolve(status()))

    async def post_device(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse()
        action = actions[request.match_info["action"]]
        return web.json_response(await action(request.match_info["device"]))

    async def post_reload(request: web.Request) -> web.Response:
        if not authorized(request):
            return refuse()
        if reload is None:
            raise web.HTTPNotFound(text="this server has nothing to reload")
        result = await resolve(reload())
        return web.json_response(result, status=422 if result["last_error"] else 200)

    async def get_metrics(request: web.Request) -> web.Response:
        if metrics_need_token and not authorized(request):
            return refuse()
        return web.Response(
            body=metrics.exposition(await resolve(status())),
            headers={"Content-Type": metrics.CONTENT_TYPE},
        )

    async def get_openapi(request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def get_page(request: web.Request) -> web.Response:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html", headers=PAGE_HEADERS)

    app = web.Application(middlewares=[host_named])
    app.router.add_get("/api/v1/status", get_status)
    app.router.add_post("/api/v1/devices/{device}/{action:unbind|remove}", post_device)
    app.router.add_post("/api/v1/reload", post_reload)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/", get_page)
    return app
