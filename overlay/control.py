"""The local control socket of a running server or agent: ``GET /status`` as JSON.

Also ``POST /actions/NAME/ARG`` (unbind a device…) and ``POST /commands/NAME``
with a JSON body (change the firewall rules…); a command the process refuses
is answered 400 with the one-line reason, which :func:`command` raises as
:class:`CommandError`.

A Unix socket, not TCP: file permissions (0600, root) are its access control,
and it is reachable from any network namespace, so ``overlay status`` works
wherever the operator's shell is.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from overlay.exceptions import CommandError, ControlError, OverlayError

T = TypeVar("T")
SHUTDOWN_TIMEOUT = 5.0  # seconds a stream still open (a capture) may hold the shutdown
# A server answers at once; a supervisor of workers (overlay.server.workers) asks them first.
StatusSource = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]  # overlay.status
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Action = Callable[[str], Awaitable[dict[str, Any]]]
Command = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


async def resolve(value: T | Awaitable[T]) -> T:
    """The value of a source that answers at once or later."""
    return await value if inspect.isawaitable(value) else value


async def start(
    path: Path,
    status: StatusSource,
    actions: Mapping[str, Action] | None = None,
    streams: Mapping[str, Handler] | None = None,
    commands: Mapping[str, Command] | None = None,
) -> web.AppRunner:
    """Serve ``status()`` at ``GET /status`` and ``actions`` at ``POST /actions/NAME/ARG``."""

    async def handle_status(request: web.Request) -> web.Response:
        return web.json_response(await resolve(status()))

    async def handle_action(request: web.Request) -> web.Response:
        action = (actions or {}).get(request.match_info["name"])
        if action is None:
            raise web.HTTPNotFound(text="no such action")
        return web.json_response(await action(request.match_info["arg"]))

    async def handle_command(request: web.Request) -> web.Response:
        command = (commands or {}).get(request.match_info["name"])
        if command is None:
            raise web.HTTPNotFound(text="no such command")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return web.json_response({"error": f"bad command body: {exc}"}, status=400)
        try:
            return web.json_response(await resolve(command(body)))
        except OverlayError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    app = web.Application()
    app.router.add_get("/status", handle_status)
    app.router.add_post("/actions/{name}/{arg}", handle_action)
    app.router.add_post("/commands/{name}", handle_command)
    for name, handler in (streams or {}).items():
        app.router.add_get(f"/{name}", handler)
    # a stream still open at shutdown (a capture) holds it SHUTDOWN_TIMEOUT at most
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a process that was killed
    old_umask = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old_umask)
    return runner


async def act(path: Path, name: str, arg: str) -> dict[str, Any]:
    """Ask the process behind ``path`` to do ``name`` with ``arg``."""
    try:
        connector = aiohttp.UnixConnector(path=str(path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"http://local/actions/{name}/{arg}", timeout=aiohttp.ClientTimeout(total=30)
            ) as response,
        ):
            response.raise_for_status()
            data: dict[str, Any] = await response.json()
            return data
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ControlError(f"cannot reach {path}: {exc}; is the process running?") from None


async def command(path: Path, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send command ``name`` to the process behind ``path``; raise CommandError if refused."""
    try:
        connector = aiohttp.UnixConnector(path=str(path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"http://local/commands/{name}",
                json=body,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response,
        ):
            data: dict[str, Any] = await response.json()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ControlError(f"cannot reach {path}: {exc}; is the process running?") from None
    if response.status != 200:
        raise CommandError(str(data.get("error", f"refused with HTTP {response.status}")))
    return data


async def fetch_status(path: Path) -> dict[str, Any]:
    """Ask the process behind ``path`` for its status."""
    try:
        connector = aiohttp.UnixConnector(path=str(path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://local/status", timeout=aiohttp.ClientTimeout(total=5)) as response,
        ):
            data: dict[str, Any] = await response.json()
            return data
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ControlError(f"cannot reach {path}: {exc}; is the process running?") from None
