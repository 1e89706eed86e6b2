"""The device agent's configuration, read from TOML into frozen dataclasses.

A device opens one tunnel per VRF. With no ``[[vrf]]`` table it has one VRF,
``device.vrf`` (``default``) in its own namespace; each ``[[vrf]]`` table adds
one, with its backend and, optionally, its own servers and credentials (what it
does not set comes from ``[server]``). docs/configuration.md and
``appliance example-config`` show every key; docs/vrf.md the VRF backends.
"""

from __future__ import annotations

import base64
import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path

import yarl

from appliance.dhcp import FORMATS
from appliance.hooks import Hooks
from appliance.vrf import BACKENDS
from overlay import bridge, codel, configfile, log, wire
from overlay.tun import IFNAMSIZ

EXAMPLE = Path(__file__).with_name("example.toml")
MAX_SERVERS = 9  # one primary and up to 8 backups, as H3C devices allow
# Packets the kernel holds for the tunnel (txqueuelen): short, so that a busy
# tunnel drops instead of queueing. docs/benchmarks.md has the measurements.
TUN_QUEUE_LENGTH = 64


@dataclass(frozen=True)
class VrfConfig:
    """One VRF: its backend and the server settings of its tunnel."""

    name: str
    backend: str  # default, netns or vrf
    netns: str  # the namespace, for the netns backend
    device: str  # the VRF master device, for the vrf backend
    tun_name: str
    urls: tuple[str, ...]
    ca_file: Path | None
    server_name: str | None
    username: str
    password: str
    source: str | None  # local address to connect from
    own_servers: bool  # urls or password set for this VRF: DHCP does not override them
    insecure: bool  # do not verify the server's certificate (logged at every connect)
    pins: frozenset[str] = frozenset()  # server public-key pins (base64 SHA-256 of the SPKI)
    client_cert: Path | None = None  # this device's certificate for mutual TLS, with its key
    client_key: Path | None = None


@dataclass(frozen=True)
class ApplianceConfig:
    device_id: str
    vrfs: tuple[VrfConfig, ...]
    connect_timeout: float
    min_delay: float
    max_delay: float
    state_dir: Path
    log_level: str
    qoe_address: str
    qoe_port: int
    tun_queue_length: int
    queue_bytes: int  # what may wait for the tunnel; beyond it packets are dropped
    queue_target: float  # CoDel (overlay.codel): seconds a standing queue may add
    queue_interval: float
    offload: bool  # ask the server for segmentation offload
    keepalive_interval: int | None
    keepalive_misses: int
    dhcp_lease_file: Path | None
    dhcp_format: str
    dhcp_poll: float
    proxy: str | None
    proxy_username: str | None
    proxy_password: str | None
    proxy_from_environment: bool
    hooks: Hooks

    @property
    def control_socket(self) -> Path:
        return self.state_dir / f"{self.device_id}.sock"


def load_appliance_config(path: str | Path) -> ApplianceConfig:
    root = configfile.load(path)
    device = root.table("device", required=True)
    server = root.table("server", required=True)
    tun = root.table("tun")
    reconnect = root.table("reconnect")
    state = root.table("state")
    logging = root.table("log")
    qoe = root.table("qoe")
    keepalive = root.table("keepalive")
    dhcp = root.table("dhcp")
    proxy = root.table("proxy")
    hooks = root.table("hooks")
    vrf_tables = root.tables("vrf")

    device_id = device.string("id")
    if not wire.NAME.fullmatch(device_id):
        device.fail("id", f"{device_id!r} must be 1-64 of A-Z a-z 0-9 . _ : - (a serial number)")
    if vrf_tables and device.has("vrf"):
        device.fail("vrf", "give the VRFs as [[vrf]] tables, not both")
    vrf_name = device.string("vrf", wire.DEFAULT_VRF)
    if not wire.NAME.fullmatch(vrf_name):
        device.fail("vrf", f"{vrf_name!r} must be 1-64 of A-Z a-z 0-9 . _ : -")
    password = configfile.read_secret(server, "password", "password_file")
    if password is None:
        server.fail("password_file", "is required (or password)")
    tun_name = tun.string("name", "ovl0")
    if len(tun_name) > IFNAMSIZ:
        tun.fail("name", f"{tun_name!r} is longer than {IFNAMSIZ} characters")
    defaults = VrfConfig(
        name=vrf_name,
        backend="default",
        netns="",
        device="",
        tun_name=tun_name,
        urls=tuple(read_urls(server)),
        ca_file=server.optional_file("ca_file"),
        server_name=server.optional_str("server_name"),
        username=server.string("username"),
        password=password,
        source=None,
        own_servers=False,
        insecure=server.flag("insecure", False),
        pins=read_pins(server),
        client_cert=server.optional_file("client_cert_file"),
        client_key=server.optional_file("client_key_file"),
    )
    if (defaults.client_cert is None) != (defaults.client_key is None):
        server.fail("client_cert_file", "give client_cert_file and client_key_file together")
    vrfs = tuple(read_vrf(t, defaults) for t in vrf_tables) or (defaults,)
    vrfs = name_tuns(root, vrfs)
    tun_queue_length = tun.integer("queue_length", TUN_QUEUE_LENGTH, low=8, high=100000)
    queue_bytes = tun.integer("queue_bytes", bridge.QUEUE_BYTES, low=1500, high=64 << 20)
    offload = tun.flag("offload", True)
    if offload:
        configfile.offload_room(tun, "queue_bytes", queue_bytes)

    min_delay = reconnect.number("min_delay", 1.0, low=0.1, high=3600)
    max_delay = reconnect.number("max_delay", 60.0, low=min_delay, high=3600)
    config = ApplianceConfig(
        device_id=device_id,
        vrfs=vrfs,
        connect_timeout=server.number("connect_timeout", 15.0, low=1, high=300),
        min_delay=min_delay,
        max_delay=max_delay,
        state_dir=(root.path.parent / state.string("dir", "/run/appliance")).resolve(),
        log_level=logging.choice("level", log.LEVELS, "info"),
        qoe_address=str(qoe.ipv4("address", "169.254.0.1")),
        qoe_port=qoe.integer("port", 5001, low=1, high=65535),
        tun_queue_length=tun_queue_length,
        queue_bytes=queue_bytes,
        queue_target=tun.number("queue_target", codel.TARGET, low=0.0001, high=1),
        queue_interval=tun.number("queue_interval", codel.INTERVAL, low=0.001, high=10),
        offload=offload,
        keepalive_interval=keepalive.integer("interval", 0, low=0, high=3600) or None,
        keepalive_misses=keepalive.integer("misses", 3, low=1, high=100),
        dhcp_lease_file=path_or_none(dhcp, "lease_file"),
        dhcp_format=dhcp.choice("format", FORMATS, "auto"),
        dhcp_poll=dhcp.number("poll_interval", 5.0, low=0.1, high=3600),
        proxy=proxy_url(proxy),
        proxy_username=proxy.optional_str("username"),
        proxy_password=configfile.read_secret(proxy, "password", "password_file"),
        proxy_from_environment=proxy.flag("from_environment", False),
        hooks=Hooks(
            up=read_command(hooks, "up"),
            down=read_command(hooks, "down"),
            timeout=hooks.number("timeout", 30.0, low=1, high=3600),
        ),
    )
    if config.proxy_username is not None and config.proxy_password is None:
        proxy.fail("password_file", "is required with proxy.username (or password)")
    tables = (device, server, tun, reconnect, state, logging, qoe, keepalive, dhcp, proxy, hooks)
    for table in (*tables, *vrf_tables, root):
        table.done()
    return config


def read_command(table: configfile.Table, key: str) -> tuple[str, ...]:
    """A hook: a command line, split as a shell would split it (but run without one)."""
    text = table.optional_str(key)
    if text is None:
        return ()
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        table.fail(key, f"cannot split {text!r}: {exc}")
    if not argv or not Path(argv[0]).is_absolute():
        table.fail(key, f"{text!r} must start with an absolute path to a program")
    return argv


def read_urls(table: configfile.Table) -> list[str]:
    urls = table.strings("urls")
    if not 1 <= len(urls) <= MAX_SERVERS:
        table.fail("urls", f"give 1 to {MAX_SERVERS} servers (a primary and up to 8 backups)")
    for url in urls:
        check_url(table, url)
    return urls


def read_vrf(table: configfile.Table, defaults: VrfConfig) -> VrfConfig:
    """A ``[[vrf]]`` table; what it does not set comes from ``[server]``."""
    name = table.string("name")
    if not wire.NAME.fullmatch(name):
        table.fail("name", f"{name!r} must be 1-64 of A-Z a-z 0-9 . _ : -")
    own_urls = table.has("urls")
    urls = tuple(read_urls(table)) if own_urls else defaults.urls
    password = configfile.read_secret(table, "password", "password_file")
    source = table.optional_str("source")
    if source is not None:
        table.ipv4("source", source)
    tun_name = table.optional_str("tun")
    if tun_name is not None and len(tun_name) > IFNAMSIZ:
        table.fail("tun", f"{tun_name!r} is longer than {IFNAMSIZ} characters")
    return VrfConfig(
        name=name,
        backend=table.choice("backend", BACKENDS, "default"),
        netns=table.string("netns", name),
        device=table.string("device", name),
        tun_name=tun_name or "",  # named by name_tuns when not given
        urls=urls,
        ca_file=table.optional_file("ca_file") or defaults.ca_file,
        server_name=table.optional_str("server_name") or defaults.server_name,
        username=table.optional_str("username") or defaults.username,
        password=password or defaults.password,
        source=source,
        own_servers=own_urls or password is not None,
        insecure=defaults.insecure,
        pins=defaults.pins,
        client_cert=defaults.client_cert,
        client_key=defaults.client_key,
    )


def read_pins(server: configfile.Table) -> frozenset[str]:
    """``pin_sha256``: one or more base64 SHA-256 pins (a second for the next key)."""
    pins = server.strings("pin_sha256", [])
    for pin in pins:
        try:
            valid = len(base64.b64decode(pin.removeprefix("sha256//"), validate=True)) == 32
        except ValueError:
            valid = False
        if not valid:
            server.fail(
                "pin_sha256",
                f"{pin!r} is not a base64 SHA-256 pin; "
                "print the server's with: overlay certs pin server.pem",
            )
    return frozenset(pin.removeprefix("sha256//") for pin in pins)


def name_tuns(root: configfile.Table, vrfs: tuple[VrfConfig, ...]) -> tuple[VrfConfig, ...]:
    """VRF names must differ, and TUN names within a namespace; unnamed TUNs get ovl0, ovl1…"""
    names: set[str] = set()
    taken: dict[str, set[str]] = {}
    named = []
    for index, vrf in enumerate(vrfs):
        if vrf.name in names:
            root.fail(f"vrf[{index}].name", f"VRF {vrf.name!r} is given twice")
        names.add(vrf.name)
        used = taken.setdefault(vrf.netns if vrf.backend == "netns" else "", set())
        tun_name = vrf.tun_name
        if not tun_name:
            tun_name = next(f"ovl{n}" for n in range(len(vrfs) + 1) if f"ovl{n}" not in used)
        elif tun_name in used:
            root.fail(f"vrf[{index}].tun", f"{tun_name!r} is used twice in one namespace")
        used.add(tun_name)
        named.append(dataclasses.replace(vrf, tun_name=tun_name))
    return tuple(named)


def path_or_none(table: configfile.Table, key: str) -> Path | None:
    """A path that need not exist yet (a DHCP lease file appears when the lease does)."""
    value = table.optional_str(key)
    return None if value is None else (table.path.parent / value).resolve()


def proxy_url(table: configfile.Table) -> str | None:
    url = table.optional_str("url")
    if url is None:
        return None
    try:
        parsed = yarl.URL(url)
    except ValueError as exc:
        table.fail("url", f"{url!r} is not a URL: {exc}")
    if parsed.scheme != "http" or not parsed.host:
        table.fail("url", f"{url!r} must be http://HOST:PORT (an HTTP CONNECT proxy)")
    return url


def check_url(table: configfile.Table, url: str) -> None:
    try:
        parsed = yarl.URL(url)
    except ValueError as exc:
        table.fail("urls", f"{url!r} is not a URL: {exc}")
    if parsed.scheme != "wss":
        table.fail("urls", f"{url!r} must start with wss:// (the tunnel always uses TLS)")
    if not parsed.host:
        table.fail("urls", f"{url!r} has no host")
