"""``overlay``: the server's command line.

Every command reads /etc/overlay/server.toml unless --config or $OVERLAY_CONFIG
names another file.

overlay serve                          run the server
overlay check-config                   load server.toml and its certificate; say what is wrong
overlay status [DEVICE]                sessions, leases and counters of the running server
overlay device add|list|remove|unbind  the device registry
overlay rule list|add|remove|move|renumber|reset|profiles
                                       the firewall rules, changed at run time
overlay capture [DEVICE] -w FILE       what the server forwards, as pcap
overlay reload                         reload the certificate, key and CRL (as SIGHUP)
overlay bird-config                    BIRD 2's configuration from [bgp]: announce the tunnels
overlay certs init|renew|client|revoke|pin
                                       a private PKI: CA, server and device certificates
overlay hash-password                  hash a tunnel password for server.toml
overlay example-config                 print a commented server.toml
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp

from overlay import __version__, certs, control, identity, log, process, wire
from overlay.exceptions import CommandError, ConfigError, ControlError, OverlayError, StoreError
from overlay.server import auth, certificate, snmp, workers
from overlay.server.bgp import bird_config
from overlay.server.certificate import day
from overlay.server.config import (
    CONTROL_SOCKET,
    DEFAULT_STATE_DIR,
    EXAMPLE,
    ServerConfig,
    load_server_config,
)
from overlay.server.fleet import fleet_tunnels
from overlay.server.leases import Lease
from overlay.server.postgres import PostgresStore
from overlay.server.qoe import ReportStore
from overlay.server.registry import Enrollment
from overlay.server.rulebook import Rulebook
from overlay.server.rules import DIRECTIONS, PROTOCOLS, SPEC_KEYS, STEP
from overlay.server.sip import MODES as SIP_MODES
from overlay.server.store import Store, open_store
from overlay.status import FleetTunnel, FlowStatus, ServerStatus, SessionStatus, server_status
from overlay.text import counts, duration

T = TypeVar("T")
BIRD_STATES = {True: "announces them", False: "NOT RUNNING: not announced", None: "not checked yet"}
MIN_PASSWORD = 8


def default_config() -> Path:
    """Where the commands read their configuration without --config."""
    return Path(os.environ.get("OVERLAY_CONFIG") or "/etc/overlay/server.toml")


CONFIG_HELP = "server.toml (default: $OVERLAY_CONFIG, else /etc/overlay/server.toml)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overlay", description="The overlay tunnel server.")
    parser.add_argument("--version", action="version", version=f"overlay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", type=Path, help=CONFIG_HELP)
    serve.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # its supervisor's

    status = commands.add_parser("status", help="show sessions, leases and counters")
    status.add_argument("--config", type=Path, help=CONFIG_HELP)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.add_argument("device", nargs="?", help="only this device: its sessions and leases")

    reload = commands.add_parser(
        "reload", help="reload the certificate, key and CRL of the running server (as SIGHUP)"
    )
    reload.add_argument("--config", type=Path, help=CONFIG_HELP)
    reload.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_certs_parser(commands)

    device = commands.add_parser("device", help="the device registry: add, list, remove, unbind")
    device_commands = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    add = device_commands.add_parser("add", help="enroll a device")
    add.add_argument("id", help="device id, e.g. its serial number")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument(
        "--generate",
        action="store_true",
        help="give it a strong password of its own, printed once (recommended: with the "
        "shared credential any device can log in as this one)",
    )
    secret.add_argument("--password-file", type=Path, help="its own password, from a file")
    add.add_argument(
        "--max-vrfs",
        type=int,
        metavar="N",
        help="the most VRFs (tunnels with their own address) it may open; default: auth.max_vrfs",
    )
    add.add_argument(
        "--require-cert",
        action="store_true",
        help="it must also present a client certificate naming it (needs auth.client_ca_file)",
    )
    for name, text in (
        ("list", "list enrolled devices"),
        ("remove", "close its tunnels (4003), release its leases, un-enroll it"),
        ("unbind", "close its tunnels (4003) and release its leases"),
    ):
        sub = device_commands.add_parser(name, help=text)
        if name != "list":
            sub.add_argument("id", help="device id")
    for sub in device_commands.choices.values():
        sub.add_argument("--config", type=Path, help=CONFIG_HELP)
    for name in ("list", "remove", "unbind"):
        device_commands.choices[name].add_argument(
            "--json", action="store_true", help="print JSON for scripts"
        )

    add_rule_parser(commands)

    capture = commands.add_parser(
        "capture", help="write what the server forwards for a device (both ways) as pcap"
    )
    capture.add_argument("--config", type=Path, help=CONFIG_HELP)
    capture.add_argument(
        "device", nargs="?", help="only this device (all its VRFs); default: every device"
    )
    capture.add_argument("-w", dest="file", required=True, help="pcap file to write, - for stdout")
    capture.add_argument("-c", dest="count", type=int, default=0, help="stop after N packets")
    capture.add_argument("--seconds", type=float, default=0, help="stop after S seconds")

    agent = commands.add_parser(
        "snmp-agent", help="answer snmpd's pass_persist requests (OVERLAY-MIB); run by snmpd"
    )
    agent.add_argument("--config", type=Path, help=CONFIG_HELP)

    qoe = commands.add_parser("qoe", help="list the QoE reports devices sent")
    qoe.add_argument("--config", type=Path, help=CONFIG_HELP)
    qoe.add_argument("device", nargs="?", help="only this device")
    qoe.add_argument("--limit", type=int, default=50, help="the newest N reports (default 50)")
    qoe.add_argument("--json", action="store_true", help="print JSON lines for scripts")

    commands.add_parser("hash-password", help="read a password (stdin or prompt), print its hash")
    check = commands.add_parser(
        "check-config", help="load server.toml, its certificate and rules; say what is wrong"
    )
    check.add_argument("--config", type=Path, help=CONFIG_HELP)
    commands.add_parser("example-config", help="print a commented server.toml")
    bird = commands.add_parser(
        "bird-config", help="print BIRD 2's configuration from [bgp] (docs/reach.md)"
    )
    bird.add_argument("--config", type=Path, help=CONFIG_HELP)
    return parser


def serve(path: Path, worker: int) -> int:
    """Run the server; with listen.workers > 1, the supervisor of its workers (or one of
    them, which the supervisor started with ``--worker N``)."""
    config = load_server_config(path)
    if worker:
        if not 1 <= worker <= config.workers:
            return process.fail(f"--worker {worker}: listen.workers is {config.workers}")
        workers.die_with_parent()
        config = workers.worker_config(config, worker)
    log.configure(config.log_level, node=config.node)
    if config.workers > 1 and not config.worker:
        return process.run(lambda stop: workers.supervise(config, path.absolute(), stop))
    from overlay.server.app import serve

    return process.run(lambda stop: serve(config, stop))


@process.quiet_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "config", False) is None:
        args.config = default_config()
    try:
        if args.command == "serve":
            return serve(args.config, args.worker)
        if args.command == "status":
            socket = running_server(args.config)
            data = server_status(asyncio.run(control.fetch_status(socket)))
            fleet = fleet_view(args.config)
            if fleet is not None:
                data["fleet"] = fleet
            if args.device is not None:
                data = only_device(data, args.device)
                if not data["sessions"] and not data["leases"] and not data.get("fleet"):
                    return process.fail(f"no session and no lease for device {args.device!r}")
                flows = asyncio.run(control.command(socket, "flows", {"device": args.device}))
                data["flows"] = flows["flows"]
            print(json.dumps(data, indent=2) if args.json else format_status(data))
            return 0
        if args.command == "snmp-agent":
            return snmp_agent(load_server_config(args.config))
        if args.command == "capture":
            config = load_server_config(args.config)
            return asyncio.run(capture(config, args.device, args.file, args.count, args.seconds))
        if args.command == "device":
            return devices(args, load_server_config(args.config))
        if args.command == "rule":
            try:
                return rule(args, load_server_config(args.config))
            except ConfigError:
                if args.rule_command != "list":
                    raise
            # a file being edited does not hide the running server's rules, as for status
            listing = asyncio.run(
                control.command(running_server(args.config), "rules", {"op": "list"})
            )
            print(json.dumps(listing, indent=2) if args.json else format_rules(listing))
            return 0
        if args.command == "check-config":
            return check_config(args.config)
        if args.command == "qoe":
            config = load_server_config(args.config)
            return list_qoe(config.qoe_file, args.device, args.limit, args.json)
        if args.command == "certs":
            return run_certs(args)
        if args.command == "reload":
            return reload(load_server_config(args.config), args.json)
        if args.command == "hash-password":
            return hash_password()
        if args.command == "bird-config":
            config = load_server_config(args.config)
            if config.bgp is None:
                return process.fail(
                    f"{args.config} has no [bgp] table: give local_as and a [[bgp.neighbor]] "
                    "(docs/reach.md)"
                )
            print(bird_config(config.bgp, config.node, config.lan.prefix), end="")
            return 0
        if args.command == "example-config":
            print(EXAMPLE.read_text(), end="")
            return 0
    except OverlayError as exc:
        return process.fail(str(exc))
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


def running_server(path: Path) -> Path:
    """The control socket of the server ``path`` configures. When the file does not load
    (an edit in progress), the default one, with a warning: the running server still
    answers."""
    try:
        return load_server_config(path).control_socket
    except ConfigError as exc:
        socket = DEFAULT_STATE_DIR / CONTROL_SOCKET
        print(f"warning: {exc}; asking the server at {socket}", file=sys.stderr)
        return socket


def check_config(path: Path) -> int:
    """``overlay check-config``: everything ``serve`` checks before it opens anything."""
    config = load_server_config(path)
    loaded = certificate.load(config, time.time())
    Rulebook(config.firewall, config.rules_file)
    print(
        f"{path}: OK (listen {config.host}:{config.port}{config.path}, certificate "
        f"{loaded.serial} until {certificate.day(loaded.not_after)}, "
        f"{len(config.firewall.rules)} rules)"
    )
    if config.rules_file.exists():
        print(
            f"note: {config.rules_file} (written by overlay rule) overrides the rules of "
            f"{path} until overlay rule reset",
            file=sys.stderr,
        )
    return 0


def add_certs_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "certs", help="a private PKI: CA, server and device certificates, renewal, revocation"
    )
    actions = parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    days = {
        "type": int,
        "default": certs.MAX_DAYS,
        "help": f"validity in days (at most and by default {certs.MAX_DAYS})",
    }
    init = actions.add_parser(
        "init", help="make a CA (unless DIR has one) and a server certificate in DIR"
    )
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument(
        "--name",
        action="append",
        required=True,
        dest="names",
        help="DNS name or IP address of the server (repeat for several)",
    )
    init.add_argument("--days", **days)
    renew = actions.add_parser(
        "renew", help="a new server certificate with the same names, from the CA in DIR"
    )
    renew.add_argument("directory", type=Path, metavar="DIR")
    renew.add_argument("--days", **days)
    renew.add_argument(
        "--new-key", action="store_true", help="with a new key (devices' pins must follow)"
    )
    client = actions.add_parser(
        "client", help="device certificates for mutual TLS, from a client CA kept in DIR"
    )
    client.add_argument("directory", type=Path, metavar="DIR")
    client.add_argument("devices", nargs="+", metavar="ID", help="device ids to issue for")
    client.add_argument("--days", **days)
    revoke = actions.add_parser(
        "revoke", help="revoke device certificates (DIR/ID.pem) in the client CA's CRL"
    )
    revoke.add_argument("directory", type=Path, metavar="DIR")
    revoke.add_argument(
        "devices", nargs="*", metavar="ID", help="device ids (none: only refresh the CRL)"
    )
    pin = actions.add_parser(
        "pin", help="print the public-key pin of a certificate (for server.pin_sha256)"
    )
    pin.add_argument("file", type=Path, metavar="PEM")


def run_certs(args: argparse.Namespace) -> int:
    if args.certs_command == "pin":
        print(identity.pin_of_file(args.file))
        return 0
    if args.certs_command == "client":
        written = certs.issue_clients(args.directory, args.devices, args.days)
    elif args.certs_command == "renew":
        written = certs.renew(args.directory, args.days, args.new_key)
    elif args.certs_command == "revoke":
        written = [certs.revoke(args.directory, args.devices)]
    else:
        written = certs.init(args.directory, args.names, args.days)
    for path in written:
        print(path)
    if args.certs_command in ("renew", "revoke"):
        print("now reload the server: overlay reload --config server.toml (or SIGHUP)")
    return 0


def reload(config: ServerConfig, as_json: bool) -> int:
    result = asyncio.run(control.command(config.control_socket, "reload", {}))
    if as_json:
        print(json.dumps(result, indent=2))
    if result.get("last_error"):
        return process.fail(f"reload refused, the certificate in use stays: {result['last_error']}")
    if not as_json:
        print(
            f"reloaded: serial {result['serial']}, valid until {day(result['not_after'])} "
            f"for {', '.join(result['names'])}"
        )
    return 0


def add_rule_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "rule", help="the firewall rules: list, add, remove, move, renumber, reset, profiles"
    )
    actions = parser.add_subparsers(dest="rule_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the rules in order, with their hit counts")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    add = actions.add_parser("add", help="add a rule (at --number, else after the last)")
    add.add_argument("--number", type=int, help="its number: a free one places it in the order")
    add.add_argument("--action", choices=("allow", "deny"), default="allow")
    add.add_argument("--profile", help="every entry of this profile (see: rule profiles)")
    add.add_argument("--direction", choices=DIRECTIONS, help="who opens the flow")
    add.add_argument("--protocol", choices=tuple(PROTOCOLS), help="default: any")
    add.add_argument("--ports", help="destination ports: 161, 80,443 or 16384-32767")
    add.add_argument(
        "--source",
        action="append",
        dest="sources",
        metavar="CIDR",
        help="only from this management range (to-device flows; repeatable)",
    )
    add.add_argument(
        "--destination",
        action="append",
        dest="destinations",
        metavar="CIDR",
        help="only to this service range (from-device flows; repeatable)",
    )
    add.add_argument(
        "--sip",
        choices=SIP_MODES,
        help="read SIP registrations on the flows it allows (from-device udp/tcp): "
        "they stay open while registered, for calls from the registrar (or any proxy)",
    )
    add.add_argument("--comment", help="a note for the next operator")
    remove = actions.add_parser("remove", help="remove rule NUMBER")
    remove.add_argument("number", type=int)
    move = actions.add_parser("move", help="give rule NUMBER the free number TO")
    move.add_argument("number", type=int)
    move.add_argument("to", type=int)
    renumber = actions.add_parser("renumber", help="number the rules 10, 20, 30… in order")
    renumber.add_argument("--start", type=int, default=STEP)
    renumber.add_argument("--step", type=int, default=STEP)
    actions.add_parser("reset", help="forget run-time changes: back to the config's rules")
    profiles = actions.add_parser("profiles", help="the profiles rules can name, with entries")
    profiles.add_argument("name", nargs="?", help="only this profile")
    for sub in actions.choices.values():
        sub.add_argument("--config", type=Path, help=CONFIG_HELP)


def rule(args: argparse.Namespace, config: ServerConfig) -> int:
    """``overlay rule …``: through the running server (which applies the change at once and
    saves it), or straight to the state file when no server runs."""
    if args.rule_command == "profiles":
        return list_profiles(config, args.name)
    command: dict[str, Any] = {"op": args.rule_command}
    if args.rule_command == "add":
        command["number"] = args.number
        command["rule"] = {
            key: getattr(args, key) for key in SPEC_KEYS if getattr(args, key) is not None
        }
    elif args.rule_command in ("remove", "move"):
        command["number"] = args.number
        if args.rule_command == "move":
            command["to"] = args.to
    elif args.rule_command == "renumber":
        command |= {"start": args.start, "step": args.step}
    process.become_owner_of(config.state_dir)  # what it saves, the service must write
    try:
        result = asyncio.run(control.command(config.control_socket, "rules", command))
    except ControlError:  # no server runs: change the saved rules it will start with
        result = Rulebook(config.firewall, config.rules_file).change(command)
    except CommandError as exc:
        return process.fail(str(exc))
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        print(format_rules(result))
    return 0


def format_rules(result: dict[str, Any]) -> str:
    lines = [f"{'NUMBER':>6}  {'ACTION':<6} {'MATCH':<40} {'HITS':>8}  COMMENT"]
    for r in result["rules"]:
        if "profile" in r:
            match = f"profile {r['profile']}"
        else:
            match = f"{r['direction']} {r['protocol']} {r.get('ports', 'any')}"
        for key, word in (("sources", "from"), ("destinations", "to")):
            if key in r:
                match += f" {word} {','.join(r[key])}"
        if "sip" in r:
            match += f" sip {r['sip']}"
        lines.append(
            f"{r['number']:>6}  {r['action']:<6} {match:<40} {r['hits']:>8}  "
            f"{r.get('comment', '')}".rstrip()
        )
    lines.append(f"{'-':>6}  {'deny':<6} {'anything else':<40} {result['unmatched']:>8}")
    lines.append(f"rules from: {result['source']}")
    return "\n".join(lines)


def list_profiles(config: ServerConfig, name: str | None) -> int:
    profiles = config.firewall.profiles
    if name is not None and name not in profiles:
        return process.fail(f"no profile named {name!r}; known: {', '.join(sorted(profiles))}")
    for profile in profiles.values():
        if name is not None and profile.name != name:
            continue
        print(f"{profile.name}: {profile.description}")
        for entry in profile.entries:
            print(f"  {entry.describe():<36} {entry.purpose}")
    return 0


def list_qoe(path: Path, device: str | None, limit: int, as_json: bool) -> int:
    if not path.exists():
        return process.fail(f"no QoE reports yet: {path} does not exist")
    store = ReportStore(path, readonly=True)
    try:
        reports = store.list(device, limit)
    finally:
        store.close()
    if as_json:
        rows = [
            {
                "id": r.id,
                "received": r.received,
                "device": r.device,
                "vrf": r.vrf,
                "address": r.address,
                "report": r.report,
            }
            for r in reports
        ]
        print(json.dumps(rows, indent=2))
        return 0
    for r in reports:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.received))
        print(
            f"{r.id:>6} {when} {r.device:<20} {r.vrf:<12} {r.address:<15} "
            f"{json.dumps(r.report, separators=(',', ':'))}"
        )
    return 0


def devices(args: argparse.Namespace, config: ServerConfig) -> int:
    """``overlay device …``: enrolling writes the registry, which the server reads at each
    handshake; removing and unbinding go through the running server (to close tunnels), or
    straight to the files when no server runs."""
    if args.device_command != "list" and not wire.NAME.fullmatch(args.id):
        return process.fail(f"{args.id!r} is not a device id (1-64 of A-Z a-z 0-9 . _ : -)")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if args.device_command == "add":
        password = None
        if args.generate:
            password = secrets.token_urlsafe(18)
        elif args.password_file is not None:
            try:
                password = args.password_file.read_text().strip()
            except OSError as exc:
                return process.fail(f"cannot read {args.password_file}: {exc.strerror}")
            if len(password) < MIN_PASSWORD or password in auth.WELL_KNOWN:
                return process.fail(
                    f"the password in {args.password_file} is too weak: "
                    f"at least {MIN_PASSWORD} characters, not a well-known one"
                )
        elif config.shared is None:
            return process.fail(
                "the server has no shared credential (auth.password_hash): "
                "give the device its own with --generate or --password-file"
            )
        if args.require_cert and config.client_ca_file is None:
            return process.fail(
                "--require-cert needs auth.client_ca_file in the server config: "
                "the CA that issues device certificates"
            )
        if args.max_vrfs is not None and not 1 <= args.max_vrfs <= 65536:
            return process.fail(f"--max-vrfs must be 1 to 65536, not {args.max_vrfs}")
        process.become_owner_of(config.state_dir)  # the service must write what we write
        password_hash = auth.hash_password(password) if password else None
        asyncio.run(
            with_store(
                config,
                lambda store: store.enroll(
                    args.id, password_hash, args.require_cert, args.max_vrfs
                ),
            )
        )
        if args.generate:
            print(
                f"{args.id} enrolled; its password (shown once, give it to the device, which "
                f"logs in with username {args.id!r}):\n{password}"
            )
        else:
            print(
                f"{args.id} enrolled, logging in with "
                f"{'its own password' if password else 'the shared credential'}"
                f"{' and a client certificate' if args.require_cert else ''}"
            )
            if not password and not args.require_cert:
                print(
                    "note: any device with the shared credential can log in as "
                    f"{args.id}; --generate or --require-cert gives it an identity of its own",
                    file=sys.stderr,
                )
        return 0
    process.become_owner_of(config.state_dir)
    if args.device_command == "list":
        enrolled, leases = asyncio.run(with_store(config, enrollments_and_leases))
        rows: list[dict[str, Any]] = [
            {
                "device": e.device,
                "own_password": e.password_hash is not None,
                "client_cert": e.client_cert,
                "enrolled": e.created,
                "leases": [
                    f"{lease.vrf}={lease.address}" for lease in leases if lease.device == e.device
                ],
            }
            for e in enrolled
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'DEVICE':<24} {'LOGIN':<16} {'ENROLLED':<20} LEASES")
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["enrolled"]))
            login = ("own password" if row["own_password"] else "shared") + (
                "+cert" if row["client_cert"] else ""
            )
            print(f"{row['device']:<24} {login:<16} {when:<20} {' '.join(row['leases']) or '-'}")
        return 0
    try:
        result = asyncio.run(control.act(config.control_socket, args.device_command, args.id))
    except ControlError:  # no server runs here: change the store itself
        result = asyncio.run(
            with_store(config, lambda store: unbind(store, args.id, args.device_command))
        )
    if args.device_command == "remove" and not result["removed"]:
        return process.fail(f"no device {args.id!r} is enrolled; see overlay device list")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    done = "removed" if args.device_command == "remove" else "unbound"
    addresses = ", ".join(result["released"]) or "no address"
    print(f"{args.id} {done}: {result['closed']} tunnel(s) closed, released {addresses}")
    return 0


def fleet_view(path: Path) -> list[FleetTunnel] | None:
    """Every tunnel of the fleet with the node that holds it, when the server shares a
    PostgreSQL store (None otherwise, or with a warning when it cannot be read)."""
    try:
        config = load_server_config(path)
    except ConfigError:
        return None  # running_server warned already
    if config.store_url is None:
        return None

    async def read(store: Store) -> list[FleetTunnel]:
        assert isinstance(store, PostgresStore)
        return await fleet_tunnels(store)

    try:
        return asyncio.run(with_store(config, read))
    except StoreError as exc:
        print(f"warning: the fleet's tunnels are not shown: {exc}", file=sys.stderr)
        return None


async def with_store(config: ServerConfig, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` on the store ``config`` names, closing it after."""
    store = await open_store(config)
    try:
        return await work(store)
    finally:
        await store.close()


async def enrollments_and_leases(store: Store) -> tuple[list[Enrollment], list[Lease]]:
    return await store.enrollments(), store.all()


async def unbind(store: Store, device: str, command: str) -> dict[str, Any]:
    """``device unbind|remove`` with no server running here: release the leases (and take
    the device out of the registry)."""
    released = [str(lease.address) for lease in await store.release(device)]
    result: dict[str, Any] = {"device": device, "closed": 0, "released": released}
    if command == "remove":
        result["removed"] = await store.unenroll(device)
    return result


async def capture(
    config: ServerConfig, device: str | None, file: str, count: int, seconds: float
) -> int:
    """Stream the server's capture of ``device`` into ``file`` (a pcap; ``-`` is stdout)."""
    query = {"count": str(count), "seconds": str(seconds)} | ({"device": device} if device else {})
    out = sys.stdout.buffer if file == "-" else open(file, "wb")  # noqa: SIM115
    try:
        connector = aiohttp.UnixConnector(path=str(config.control_socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(
                "http://local/capture", params=query, timeout=aiohttp.ClientTimeout(total=None)
            ) as response,
        ):
            if response.status != 200:
                return process.fail((await response.text()).strip())
            async for chunk in response.content.iter_any():
                out.write(chunk)
                out.flush()
    except (aiohttp.ClientError, OSError) as exc:
        return process.fail(
            f"cannot capture through {config.control_socket}: {exc}; is the server running?"
        )
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


async def snmp_status(socket: Path) -> tuple[ServerStatus, list[FlowStatus]]:
    """The status and every device's flows, for one SNMP view."""
    status = server_status(await control.fetch_status(socket))
    flows = await control.command(socket, "flows", {"device": None})
    return status, flows["flows"]


def snmp_agent(config: ServerConfig) -> int:
    """net-snmp's pass_persist loop on stdin/stdout; a status older than a second is refetched."""
    fetched, objects = 0.0, []
    for line in sys.stdin:
        command = line.strip()
        if command == "PING":
            reply = ["PONG"]
        elif command in ("get", "getnext"):
            oid = snmp.parse_oid(sys.stdin.readline())
            if time.monotonic() - fetched > 1:
                try:
                    status, flows = asyncio.run(snmp_status(config.control_socket))
                    objects = snmp.table(status, flows, time.time())
                except ControlError:
                    objects = []  # the server is down: nothing to show, and snmpd stays up
                fetched = time.monotonic()
            reply = snmp.answer(command, oid, objects)
        elif command == "set":
            sys.stdin.readline()
            sys.stdin.readline()
            reply = ["not-writable"]
        else:
            reply = ["NONE"]
        print("\n".join(reply), flush=True)
    return 0


def hash_password() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("tunnel password: ")
        if getpass.getpass("again: ") != password:
            return process.fail("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD:
        return process.fail(f"the password must have at least {MIN_PASSWORD} characters")
    if password in auth.WELL_KNOWN:
        return process.fail("that is a well-known password; choose another")
    print(auth.hash_password(password))
    return 0


def only_device(data: ServerStatus, device: str) -> ServerStatus:
    """The status narrowed to one device: its sessions (one per VRF) and leases."""
    sessions = [s for s in data["sessions"] if s["device"] == device]
    drops: Counter[str] = Counter()
    for session in sessions:
        drops.update(session["drops"])
    return data | {
        "sessions": sessions,
        "leases": [lease for lease in data["leases"] if lease["device"] == device],
        **(
            {"fleet": [t for t in data["fleet"] if t["device"] == device]}
            if "fleet" in data
            else {}
        ),
        "drops": dict(drops),
        "refusals": {},
    }


def worker_of(session: SessionStatus) -> str:
    """ "  w2" after a session worker 2 holds (its packets cross ovl0w2); "" for one server."""
    worker = cast(Mapping[str, Any], session).get("worker")
    return "" if worker is None else f"  w{worker}"


def format_status(data: ServerStatus) -> str:
    """The operator's view: one row per session, then totals."""
    server = data["server"]
    lines = [
        f"server {server['node']}: {server['overlay']} on {server['tun']}, "
        f"listening {server['listen']}, "
        f"{len(data['sessions'])} sessions, {server['leases']} leases (pool {server['pool']})",
        "",
        f"{'DEVICE':<18} {'VRF':<10} {'ADDRESS':<15} {'PEER':<15} {'UP':>7} "
        f"{'RX BYTES/PKTS':>17} {'TX BYTES/PKTS':>17} {'DROPS':>5} {'HEARD':>5}",
    ]
    now = time.time()
    for s in data["sessions"]:
        drops = counts(s["drops"], ",", "0")
        lines.append(
            f"{s['device']:<18} {s['vrf']:<10} {s['address']:<15} {s['peer']:<15} "
            f"{duration(now - s['since']):>7} {s['rx_bytes']:>11}/{s['rx_packets']:<5} "
            f"{s['tx_bytes']:>11}/{s['tx_packets']:<5} {drops:>5} {s['idle']:>4.0f}s" + worker_of(s)
        )
    lines.append("")
    lines.append(
        "leases: "
        + (
            " ".join(
                f"{lease['device']}/{lease['vrf']}={lease['address']}"
                + (f" ({lease['lan_address']})" if lease.get("lan_address") else "")
                for lease in data["leases"][:20]
            )
            + (" …" if len(data["leases"]) > 20 else "")
            or "none"
        )
    )
    lines.append("drops: " + counts(data["drops"]))
    store = server.get("store")
    if store is not None and "flows" not in data:
        lines.append(
            f"store: {store['backend']} {'up' if store['up'] else 'UNAVAILABLE'}, "
            f"{server['enrolled']} devices enrolled"
            + (f", {store['races']} lease races" if store["races"] else "")
        )
    workers = data.get("workers")
    if workers and "flows" not in data:
        lines.append(
            "workers: "
            + ", ".join(
                (
                    f"{w['number']} pid {w['pid']} {w['sessions']} tunnels"
                    if w["up"]
                    else f"{w['number']} DOWN"
                )
                + (f" ({w['restarts']} restarts)" if w["restarts"] else "")
                for w in workers
            )
        )
    routes = server.get("routes")
    if routes is not None and "flows" not in data:
        bird = server.get("bird")
        lines.append(
            f"routes: {routes['installed']} (protocol 250)"
            + (f", refused: {counts(routes['errors'])}" if routes["errors"] else "")
            + ("" if bird is None else ", BIRD " + BIRD_STATES[bird["up"]])
        )
    lan = server.get("lan")
    if lan is not None and "flows" not in data:
        lines.append(
            "lan: "
            + "; ".join(
                part
                for part in (
                    lan["prefix"] and f"{lan['prefix']} maps {lan['maps']}",
                    lan["management"] and "management " + ", ".join(lan["management"]),
                    lan["services"] and "services " + ", ".join(lan["services"]),
                )
                if part
            )
        )
    if "fleet" in data:
        held = Counter(t["node"] for t in data["fleet"])
        lines.append(
            f"fleet: {len(data['fleet'])} tunnels; "
            + (", ".join(f"{node} {count}" for node, count in sorted(held.items())) or "none")
        )
        if "flows" in data:  # one device: where each of its tunnels is
            lines += [
                f"  {t['vrf']} on {t['node']} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t['since']))}"
                for t in data["fleet"]
            ]
    if "flows" not in data:  # the whole server (one device's view lists its flows last)
        firewall = data["firewall"]
        lines.append(
            f"firewall: {firewall['rules']} rules (from {firewall['rules_from']}), "
            f"{firewall['flows']} flows, {firewall['opened']} opened, "
            f"{firewall['unmatched']} denied by no rule"
        )
        if firewall["sip"]:
            lines.append(
                f"sip: {firewall['sip_held']} flows held by registrations; "
                + counts(firewall["sip"])
            )
    lines.append("refusals: " + counts(data["refusals"]))
    if "flows" in data:
        lines += ["", format_flows(data["flows"])]
    return "\n".join(lines)


def format_flows(flows: list[FlowStatus]) -> str:
    lines = [
        f"flows: {len(flows)}",
        f"{'VRF':<10} {'PROTO':<5} {'OPENED BY':<10} {'REMOTE':<21} {'DEVICE PORT':<21} "
        f"{'STATE':<11} {'RULE':>4} {'PKTS':>7} {'ENDS IN':>8}",
    ]
    for f in sorted(flows, key=lambda f: (f["vrf"], f["protocol"], f["device_port"])):
        if f["protocol"] == "icmp":  # echo: the identifier instead of ports
            remote, device = f["remote"], f"{f['address']} id {f['remote_port']}"
        else:
            remote = f"{f['remote']}:{f['remote_port']}"
            device = f"{f['address']}:{f['device_port']}"
        lines.append(
            f"{f['vrf']:<10} {f['protocol']:<5} {f['opened_by']:<10} {remote:<21} "
            f"{device:<21} {f['state']:<11} "
            f"{f['rule'] if f['rule'] is not None else '-':>4} {f['packets']:>7} "
            f"{f['expires_in']:>7.0f}s" + (" sip-held" if f["sip_held"] else "")
        )
    return "\n".join(lines)
