"""Several server processes on one port, one per core: ``listen.workers``.

The supervisor starts each worker as ``overlay serve --worker N``: a whole
server with its own TUN (``ovl0w1``…), its own name in the fleet
(``srv1-w1``…) and its own control socket. The workers share

- the listening port (SO_REUSEPORT): the kernel spreads new connections over them;
- the store: leases and enrolments, in the state directory's SQLite files
  (the default) or in PostgreSQL;
- the rule that a (device, VRF) has one live tunnel: through the supervisor's
  relay with SQLite (:mod:`overlay.server.relay`), and between workers as
  between the nodes of a fleet with PostgreSQL (:mod:`overlay.server.fleet`);
- the count of failed logins per source address, through the relay;
- the overlay address on every TUN, and a /32 route per tunnel through the TUN
  of the worker that holds it, so that the kernel sends a device's packets to
  that worker.

The supervisor owns what an operator talks to: the control socket and the
admin listener, which answer for all workers (their status merged by
:mod:`overlay.server.merge`, actions and commands sent to each, captures
joined). It forwards SIGHUP, stops every worker on SIGTERM, and starts again
a worker that dies: its devices reconnect to any worker, with their addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog
from aiohttp import web

from overlay import control, pcap, systemd
from overlay.exceptions import ControlError, OverlayError, WorkerError
from overlay.server import admin, merge, nft, relay
from overlay.server.app import refuse_weak_password
from overlay.server.certificate import ServerCertificate
from overlay.server.config import ServerConfig
from overlay.server.qoe import ReportStore
from overlay.server.store import open_store
from overlay.status import CertificateStatus, ServerStatus, WorkerStatus, server_status

log = structlog.get_logger("overlay.server")

T = TypeVar("T")
START_TIMEOUT = 60.0  # seconds a worker has to answer on its control socket
STOP_TIMEOUT = 60.0  # seconds the workers have to close their sessions before SIGKILL
RESTART_DELAY = 1.0  # seconds before a worker that died starts again; doubled while it
MAX_RESTART_DELAY = 30.0  # keeps dying within STABLE seconds of its start, up to this
STABLE = 10.0
PR_SET_PDEATHSIG = 1
CAPTURE_RECORDS = 1024  # pcap records a capture holds between the workers and its reader


@dataclasses.dataclass
class Worker:
    """One worker process, and what the supervisor knows of it."""

    config: ServerConfig
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    delay: float = RESTART_DELAY

    @property
    def number(self) -> int:
        return self.config.worker

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def worker_config(config: ServerConfig, number: int) -> ServerConfig:
    """What worker ``number`` of the server ``config`` runs with: its TUN, node name and
    control socket; no admin listener (the supervisor's answers for all)."""
    return dataclasses.replace(
        config,
        worker=number,
        tun_name=f"{config.tun_name}w{number}",
        node=f"{config.node}-w{number}",
        admin=None,
    )


def die_with_parent() -> None:
    """Have the kernel stop this worker (SIGTERM) when its supervisor dies, even by SIGKILL:
    no worker outlives it holding the port and the devices."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    def __init__(self, config: ServerConfig, config_path: Path) -> None:
        self.config = config
        self.config_path = config_path
        self.workers = [
            Worker(worker_config(config, number)) for number in range(1, config.workers + 1)
        ]
        self.refusals: Counter[str] = Counter()  # the admin listener's
        self.hub = relay.Hub()  # what a worker tells, to the others
        self.tally = merge.Tally()  # what workers that died or do not answer had counted
        self.started = time.time()
        self.stopping = False
        self._reloading: set[asyncio.Task[None]] = set()

    async def start(self, worker: Worker) -> None:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # systemd hears the supervisor only
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "overlay",
            "serve",
            "--config",
            str(self.config_path),
            "--worker",
            str(worker.number),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        worker.started = time.monotonic()
        log.info("worker started", worker=worker.number, pid=worker.process.pid)

    async def ready(self, worker: Worker) -> None:
        """Return once ``worker`` answers on its control socket; WorkerError if it exits or
        does not answer within START_TIMEOUT."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert worker.process is not None
            if worker.process.returncode is not None:
                raise WorkerError(
                    f"worker {worker.number} exited with code {worker.process.returncode} while "
                    "starting: its error is in the lines above"
                )
            with contextlib.suppress(ControlError):
                await control.fetch_status(worker.config.control_socket)
                return
            if time.monotonic() > deadline:
                raise WorkerError(f"worker {worker.number} did not start in {START_TIMEOUT:.0f} s")
            await asyncio.sleep(0.1)

    async def watch(self, worker: Worker) -> None:
        """Start ``worker`` again whenever it dies, until the supervisor stops."""
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping:
                return
            ran = time.monotonic() - worker.started
            worker.delay = (
                RESTART_DELAY if ran > STABLE else min(2 * worker.delay, MAX_RESTART_DELAY)
            )
            worker.restarts += 1
            log.error(
                "worker died; starting it again",
                worker=worker.number,
                code=code,
                ran=round(ran, 1),
                restart_in=worker.delay,
            )
            await asyncio.sleep(worker.delay)
            await self.start(worker)

    def signal(self, signum: signal.Signals) -> None:
        for worker in self.workers:
            if worker.running:
                assert worker.process is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM to every worker (they close their sessions with 1001); SIGKILL to those
        still running after STOP_TIMEOUT."""
        self.stopping = True
        self.signal(signal.SIGTERM)
        running = [w.process for w in self.workers if w.running and w.process is not None]
        if not running:
            return
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in running)), timeout=STOP_TIMEOUT
            )
        except TimeoutError:
            log.error("workers did not stop in time; killing them", timeout=STOP_TIMEOUT)
            self.signal(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in running))

    # What the operator asks, of every worker:

    async def each(self, ask: Callable[[Path], Awaitable[T]]) -> list[tuple[Worker, T]]:
        """Ask every running worker; those that cannot answer now (dying, restarting) are
        left out."""
        running = [w for w in self.workers if w.running]
        answers = await asyncio.gather(
            *(ask(w.config.control_socket) for w in running), return_exceptions=True
        )
        found: list[tuple[Worker, T]] = []
        for worker, answer in zip(running, answers, strict=True):
            if isinstance(answer, OverlayError) and not isinstance(answer, ControlError):
                raise answer  # a command a worker refused: all refuse it alike
            if isinstance(answer, BaseException):
                log.warning("a worker did not answer", worker=worker.number, error=str(answer))
                continue
            found.append((worker, answer))
        if not found:
            raise WorkerError("no worker answers: they are starting again; try in a moment")
        return found

    async def status(self) -> ServerStatus:
        answers = await self.each(control.fetch_status)
        parts = {worker.number: server_status(part) for worker, part in answers}
        for worker, _ in answers:
            assert worker.process is not None
            self.tally.remember(worker.number, worker.process.pid, parts[worker.number])
        workers: list[WorkerStatus] = [
            {
                "number": w.number,
                "node": w.config.node,
                "tun": w.config.tun_name,
                "pid": w.process.pid if w.running and w.process is not None else None,
                "up": w.number in parts,
                "sessions": len(parts[w.number]["sessions"]) if w.number in parts else 0,
                "restarts": w.restarts,
            }
            for w in self.workers
        ]
        merged = merge.status(
            parts, self.config.node, self.started, self.refusals, workers, self.tally.gone(parts)
        )
        merged["server"]["relay_dropped"] = self.hub.dropped
        return merged

    def action(self, name: str) -> Callable[[str], Awaitable[dict[str, Any]]]:
        async def act(device: str) -> dict[str, Any]:
            answers = await self.each(lambda path: control.act(path, name, device))
            return merge.unbind([answer for _, answer in answers])

        return act

    def command(
        self,
        name: str,
        merged: Callable[[list[dict[str, Any]]], dict[str, Any]] = lambda answers: answers[0],
    ) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        """A command every worker does (the rules, a reload), one after the other: a
        command the first refuses goes no further, and two workers never save the rules
        at once. Their answers are ``merged``; by default the first's stands for all: they
        share what it changes."""

        async def run(body: dict[str, Any]) -> dict[str, Any]:
            answers: list[dict[str, Any]] = []
            for worker in [w for w in self.workers if w.running]:
                try:
                    answers.append(await control.command(worker.config.control_socket, name, body))
                except ControlError as exc:  # it loads the saved state when it starts again
                    log.warning("a worker did not answer", worker=worker.number, error=str(exc))
            if not answers:
                raise WorkerError("no worker answers: they are starting again; try in a moment")
            return merged(answers)

        return run

    async def flows(self, body: dict[str, Any]) -> dict[str, Any]:
        answers = await self.each(lambda path: control.command(path, "flows", body))
        return merge.flows([answer for _, answer in answers])

    async def reload(self) -> CertificateStatus:
        result: dict[str, Any] = await self.command("reload")({})
        return result  # type: ignore[return-value]

    def hangup(self) -> None:
        """SIGHUP: every worker reloads the certificate, one after the other, and systemd
        hears of the reload from the supervisor, the process it knows."""
        task = asyncio.create_task(self._reload_all())
        self._reloading.add(task)
        task.add_done_callback(self._reloading.discard)

    async def _reload_all(self) -> None:
        systemd.notify("RELOADING=1")
        try:
            await self.reload()
        except OverlayError as exc:
            log.error("reload failed", error=str(exc))
        systemd.notify("READY=1")

    async def capture(self, request: web.Request) -> web.StreamResponse:
        """One pcap stream of what every worker forwards for the device: their records as
        they come, under one file header."""
        count = int(request.query.get("count", "0")) or None
        async with contextlib.AsyncExitStack() as stack:
            streams: list[aiohttp.ClientResponse] = []
            refusal = ""
            for worker in [w for w in self.workers if w.running]:
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(
                        connector=aiohttp.UnixConnector(path=str(worker.config.control_socket))
                    )
                )
                try:
                    answer = await stack.enter_async_context(
                        session.get("http://local/capture", params=request.query)
                    )
                except aiohttp.ClientError as exc:
                    log.warning("a worker did not answer", worker=worker.number, error=str(exc))
                    continue
                if answer.status != 200:
                    refusal = await answer.text()  # no lease: every worker says so alike
                    continue
                await answer.content.readexactly(pcap.FILE_HEADER_BYTES)  # one header for all
                streams.append(answer)
            if not streams:
                raise web.HTTPNotFound(text=refusal or "no worker answers")
            response = web.StreamResponse(headers={"Content-Type": "application/vnd.tcpdump.pcap"})
            await response.prepare(request)
            await response.write(pcap.file_header())
            # bounded: a slow reader holds the workers back, whose taps drop and count
            records: asyncio.Queue[bytes | None] = asyncio.Queue(CAPTURE_RECORDS)
            pumps = [asyncio.create_task(pump(stream, records)) for stream in streams]
            written, ended = 0, 0
            try:
                while ended < len(pumps) and (count is None or written < count):
                    record = await records.get()
                    if record is None:
                        ended += 1
                        continue
                    await response.write(record)
                    written += 1
            except (ConnectionResetError, asyncio.CancelledError):
                pass
            finally:
                for task in pumps:
                    task.cancel()
            await response.write_eof()
            return response


async def pump(stream: aiohttp.ClientResponse, records: asyncio.Queue[bytes | None]) -> None:
    """Put each pcap record of ``stream`` whole in ``records``; None at its end."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.IncompleteReadError):
        while True:
            header = await stream.content.readexactly(pcap.RECORD_HEADER_BYTES)
            await records.put(header + await stream.content.readexactly(pcap.captured(header)))
    await records.put(None)


async def prepare(config: ServerConfig) -> None:
    """Check once what every worker would refuse (the certificate, a well-known password, the
    store) and create the stores' files and schema, before any worker starts: one line for
    the operator, not one per worker, and no two workers creating one SQLite file at once
    (which SQLite refuses: ``database is locked``)."""
    ServerCertificate(config)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    await refuse_weak_password(config)
    store = await open_store(config)
    await store.close()
    if config.qoe_port is not None:
        ReportStore(config.qoe_file).close()


async def supervise(config: ServerConfig, config_path: Path, stop: asyncio.Event) -> None:
    """Run ``config.workers`` workers until ``stop`` is set, then stop them all."""
    await prepare(config)
    supervisor = Supervisor(config, config_path)
    async with contextlib.AsyncExitStack() as stack:
        if config.lan.translates:  # one table for every worker's TUN (ovl0w1, ovl0w2…)
            await nft.install(config.lan, f"{config.tun_name}w*", config.address)
            stack.push_async_callback(nft.remove)
        relaying = await supervisor.hub.start(config.relay_socket)  # what workers tell
        stack.callback(config.relay_socket.unlink, missing_ok=True)
        stack.callback(relaying.close)
        stack.push_async_callback(supervisor.stop)
        for worker in supervisor.workers:
            await supervisor.start(worker)
        await asyncio.gather(*(supervisor.ready(w) for w in supervisor.workers))
        watching = [asyncio.create_task(supervisor.watch(w)) for w in supervisor.workers]
        for task in watching:
            stack.callback(task.cancel)
        actions = {"unbind": supervisor.action("unbind"), "remove": supervisor.action("remove")}
        control_runner = await control.start(
            config.control_socket,
            supervisor.status,
            actions,
            {"capture": supervisor.capture},
            {
                "rules": supervisor.command("rules", merge.rules),
                "flows": supervisor.flows,
                "reload": supervisor.command("reload"),
            },
        )
        stack.push_async_callback(control_runner.cleanup)
        if config.admin is not None:
            admin_runner = await admin.start(
                config,
                supervisor.status,
                actions,
                supervisor.refusals,
                supervisor.reload,
            )
            stack.push_async_callback(admin_runner.cleanup)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, supervisor.hangup)
        log.info(
            "workers listening",
            listen=f"{config.host}:{config.port}",
            workers=config.workers,
            pids=[w.process.pid for w in supervisor.workers if w.process is not None],
        )
        systemd.notify(
            "READY=1", f"STATUS=listening on {config.host}:{config.port}, {config.workers} workers"
        )
        await stop.wait()
        systemd.notify("STOPPING=1")
        log.info("stopping the workers")
    log.info("workers stopped")
