"""The server's wiring: stores, TUN, node, endpoint, listeners and control, started in
order and stopped in reverse; on stop, every session is closed with 1001.

The rooms: :mod:`~overlay.server.listener` (TLS and the listening socket),
:mod:`~overlay.server.endpoint` (a request becomes a session or a counted
refusal), :mod:`~overlay.server.node` (sessions, status and what operators may
ask of them), :mod:`~overlay.server.router` (packets between the TUN and the
sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import signal

import structlog
from aiohttp import web

from overlay import control, systemd
from overlay.exceptions import ConfigError
from overlay.process import spare_full_collections
from overlay.server import admin, nft
from overlay.server.birdwatch import BirdWatch
from overlay.server.capture import capture_handler
from overlay.server.certificate import ServerCertificate, day
from overlay.server.config import ServerConfig
from overlay.server.endpoint import Endpoint
from overlay.server.fleet import Fleet
from overlay.server.listener import listen, listen_for_tunnels
from overlay.server.node import Node
from overlay.server.postgres import PostgresStore
from overlay.server.qoe import MAX_REPORT, Collector, ReportWriter
from overlay.server.relay import Relay
from overlay.server.routes import KernelRoutes
from overlay.server.rulebook import Rulebook
from overlay.server.store import Store, open_store
from overlay.tun import Tun

log = structlog.get_logger("overlay.server")


async def serve(config: ServerConfig, stop: asyncio.Event) -> None:
    """Run the server until ``stop`` is set, then close every session with 1001."""
    spare_full_collections()
    certificate = ServerCertificate(config)  # refuses an expired or mismatched one first
    context = certificate.context
    config.state_dir.mkdir(parents=True, exist_ok=True)
    await refuse_weak_password(config)
    rulebook = Rulebook(config.firewall, config.rules_file)
    async with contextlib.AsyncExitStack() as stack:
        store = await open_store(config)
        stack.push_async_callback(store.close)
        tun = Tun.create(config.tun_name)
        stack.callback(tun.close)
        await tun.configure(config.interface, config.mtu)
        tun.set_offload(config.offload)
        routes = await KernelRoutes.open(tun.name) if config.routes else None
        if routes is not None:
            stack.push_async_callback(routes.close)  # after the sessions: ours all go
        if config.lan.translates and not config.worker:  # the supervisor's, for all workers
            await nft.install(config.lan, tun.name, config.address)
            stack.push_async_callback(nft.remove)

        collector = None
        if config.qoe_port is not None:
            reports = ReportWriter(config.qoe_file)  # its own file and thread: see qoe.py
            await reports.open()
            stack.push_async_callback(reports.close)
            collector = Collector(
                reports, lambda address: lease_owner(store, address), config.qoe_quota
            )
            pruning = asyncio.create_task(collector.prune())
            stack.push_async_callback(cancel, pruning)
            qoe = await listen(
                asyncio.start_server(
                    collector.handle,
                    str(config.address),
                    config.qoe_port,
                    ssl=context,
                    limit=MAX_REPORT + 1,
                    reuse_port=config.worker > 0,  # each worker takes reports
                ),
                f"{config.address}:{config.qoe_port} (QoE)",
            )
            stack.callback(qoe.close)

        node = Node(config, store, tun, collector, rulebook, certificate.status)
        node.routes = routes
        if config.bgp is not None:
            node.bird = BirdWatch(config.bgp.bird_socket)
            looking = asyncio.create_task(node.bird.run())
            stack.push_async_callback(cancel, looking)
        if isinstance(store, PostgresStore):  # a fleet: one live tunnel per (device, VRF)
            fleet = Fleet(
                store, config.node, config.tunnel_ttl, node.live, node.newer_elsewhere, node.gone
            )
            await fleet.start()
            stack.push_async_callback(fleet.close)  # after the sessions' close: rows go last
            node.claims = fleet
        # TCP keepalive comes from the listener (listen_for_tunnels), not per connection
        endpoint = Endpoint(node)
        stack.callback(endpoint.close)
        if config.worker:  # what the other workers must hear: failed logins, tunnels
            relay = Relay(
                config.relay_socket, config.node, node.newer_elsewhere, endpoint.failed_elsewhere
            )
            relay.start()
            stack.push_async_callback(relay.close)
            endpoint.relay = relay
            if node.claims is None:  # the SQLite store: tunnels go through the relay too
                node.claims = relay
        runner = web.AppRunner(
            endpoint.app(), access_log=None, handle_signals=False, tcp_keepalive=False
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        assert runner.server is not None  # set by setup()
        listener = await listen(
            listen_for_tunnels(
                node.gate.wrap(runner.server),
                config.host,
                config.port,
                context,
                config.handshake_timeout,
                shared=config.worker > 0,
            ),
            f"{config.host}:{config.port}",
        )
        actions: dict[str, control.Action] = {"unbind": node.unbind, "remove": node.remove}
        if config.admin is not None:
            admin_runner = await admin.start(
                config,
                node.status,
                actions,
                node.refusals,
                certificate.reload,
            )
            stack.push_async_callback(admin_runner.cleanup)
        control_runner = await control.start(
            config.control_socket,
            node.status,
            actions,
            {"capture": capture_handler(node.router, store)},
            {
                "rules": node.change_rules,
                "flows": node.flows,
                "reload": lambda _: dict(certificate.reload()),
            },
        )
        stack.push_async_callback(control_runner.cleanup)
        router = asyncio.create_task(node.router.run())
        stack.push_async_callback(cancel, router)
        beating = asyncio.create_task(node.keep_alive())
        stack.push_async_callback(cancel, beating)
        sweeper = asyncio.create_task(node.router.sweep())
        stack.push_async_callback(cancel, sweeper)
        forgetting = asyncio.create_task(endpoint.forget())
        stack.push_async_callback(cancel, forgetting)
        watching = asyncio.create_task(certificate.watch())
        stack.push_async_callback(cancel, watching)

        def reload() -> None:
            systemd.notify("RELOADING=1")
            certificate.reload()
            systemd.notify("READY=1")

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

        log.info(
            "server listening",
            listen=f"{config.host}:{config.port}",
            path=config.path,
            overlay=str(config.address),
            tun=tun.name,
            leases=len(store),
            store=store.status()["backend"],
            qoe=config.qoe_port,
            certificate=certificate.current.serial,
            certificate_expires=day(certificate.current.not_after),
            rules=len(rulebook.ruleset.rules),
            rules_from=str(config.rules_file) if rulebook.changed else "config",
        )
        if rulebook.changed:  # an operator editing server.toml would wonder why nothing changes
            log.warning(
                "firewall rules come from the state, not the config",
                rules_file=str(config.rules_file),
                action="overlay rule list shows them; overlay rule reset returns to the config",
            )
        # The TUN, 169.254.0.1 and every listener are up: rsyslog, chrony and a web server
        # that bind the overlay address may start now (After=overlay.service).
        systemd.notify("READY=1", f"STATUS=listening on {config.host}:{config.port}")
        await stop.wait()
        systemd.notify("STOPPING=1")
        log.info("server stopping", sessions=len(node.router.by_key))
        listener.close()
        gc.freeze()  # leaving: no need to walk every session's objects again while they close
        await node.close_sessions()
    log.info("server stopped")


async def refuse_weak_password(config: ServerConfig) -> None:
    """Never run with a vendor default like "123456", unless the operator insists, loudly."""
    if config.shared is None:
        return
    weak = await asyncio.to_thread(
        config.shared.password_hash.well_known_unless_checked, config.password_checked_file
    )
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


async def lease_owner(store: Store, address: ipaddress.IPv4Address) -> tuple[str, str] | None:
    lease = store.owner(address) or await store.find(address)
    return (lease.device, lease.vrf) if lease is not None else None


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
