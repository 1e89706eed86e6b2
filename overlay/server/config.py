"""The server's configuration, read from TOML into a frozen dataclass.

docs/configuration.md and ``overlay example-config`` show every key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from overlay import configfile, log, wire
from overlay.addressing import DEFAULT_POOL, OVERLAY, AddressPool
from overlay.exceptions import ConfigError
from overlay.server.auth import Credentials, PasswordHash

EXAMPLE = Path(__file__).with_name("example.toml")


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    path: str
    cert_file: Path
    key_file: Path
    handshake_timeout: float
    max_pending: int
    tun_name: str
    address: ipaddress.IPv4Address
    pool: AddressPool
    mtu: int
    ping_interval: int
    keepalive_misses: int
    max_message: int
    queue_bytes: int
    shared: Credentials | None  # the shared OVOC-style credential, if any
    auto_enroll: bool
    allow_weak_password: bool
    max_failures: int
    failure_window: float
    lockout: float
    state_dir: Path
    log_level: str
    qoe_port: int | None
    admin: tuple[str, int] | None  # host and port of the admin listener, None when off
    admin_token_file: Path
    metrics_need_token: bool

    @property
    def qoe_file(self) -> Path:
        return self.state_dir / "qoe.sqlite"

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        """The server's address on its TUN: the whole overlay is on-link."""
        return ipaddress.IPv4Interface(f"{self.address}/{OVERLAY.prefixlen}")

    @property
    def registry_file(self) -> Path:
        return self.state_dir / "devices.sqlite"

    @property
    def lease_file(self) -> Path:
        return self.state_dir / "leases.sqlite"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"


def load_server_config(path: str | Path) -> ServerConfig:
    root = configfile.load(path)
    listen = root.table("listen", required=True)
    overlay = root.table("overlay")
    auth = root.table("auth", required=True)
    state = root.table("state")
    logging = root.table("log")
    qoe = root.table("qoe")
    admin = root.table("admin")

    url_path = listen.string("path", wire.DEFAULT_PATH)
    if not url_path.startswith("/"):
        url_path = "/" + url_path
    address = overlay.ipv4("address", "169.254.0.1")
    if address not in OVERLAY:
        overlay.fail("address", f"{address} is outside the overlay 169.254.0.0/16")
    try:
        pool = AddressPool.parse(overlay.string("pool", DEFAULT_POOL))
    except ConfigError as exc:
        overlay.fail("pool", str(exc))
    mtu = overlay.integer("mtu", wire.DEFAULT_MTU, low=576, high=65535)
    shared = None
    raw_hash = auth.optional_str("password_hash")
    if raw_hash is not None:
        try:
            shared = Credentials(auth.string("username", "VPN"), PasswordHash.parse(raw_hash))
        except ConfigError as exc:
            auth.fail("password_hash", str(exc))
    elif auth.has("username"):
        auth.fail("username", "a shared username needs auth.password_hash as well")
    state_dir = path_relative(root.path, state.string("dir", "/var/lib/overlay"))
    config = ServerConfig(
        host=listen.string("host", "0.0.0.0"),
        port=listen.integer("port", 443, low=1, high=65535),
        path=url_path,
        cert_file=listen.file("cert_file"),
        key_file=listen.file("key_file"),
        handshake_timeout=listen.number("handshake_timeout", 10.0, low=0.1, high=300),
        max_pending=listen.integer("max_pending", 1000, low=1, high=1_000_000),
        tun_name=overlay.string("tun_name", "ovl0"),
        address=address,
        pool=pool,
        mtu=mtu,
        ping_interval=overlay.integer(
            "ping_interval", wire.DEFAULT_PING_INTERVAL, low=1, high=3600
        ),
        keepalive_misses=overlay.integer("keepalive_misses", 3, low=1, high=100),
        max_message=overlay.integer(
            "max_message", wire.DEFAULT_MAX_MESSAGE, low=mtu, high=16 << 20
        ),
        queue_bytes=overlay.integer("queue_bytes", 131072, low=mtu, high=64 << 20),
        shared=shared,
        auto_enroll=auth.flag("auto_enroll", False),
        allow_weak_password=auth.flag("allow_weak_password", False),
        max_failures=auth.integer("max_failures", 10, low=1, high=10000),
        failure_window=auth.number("failure_window", 60.0, low=1, high=86400),
        lockout=auth.number("lockout", 60.0, low=1, high=86400),
        state_dir=state_dir,
        log_level=logging.choice("level", log.LEVELS, "info"),
        qoe_port=qoe.integer("port", 5001, low=1, high=65535)
        if qoe.flag("enabled", True)
        else None,
        admin=admin_listen(admin),
        admin_token_file=path_relative(
            root.path, admin.string("token_file", str(state_dir / "admin-token"))
        ),
        metrics_need_token=admin.flag("metrics_need_token", False),
    )
    for table in (listen, overlay, auth, state, logging, qoe, admin, root):
        table.done()
    return config


def admin_listen(table: configfile.Table) -> tuple[str, int] | None:
    value = table.string("listen", "127.0.0.1:9180")
    if value == "off":
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        table.fail("listen", f'{value!r} must be HOST:PORT, or "off"')
    return host, int(port)


def path_relative(config_path: Path, value: str) -> Path:
    """A path from a config file, relative to the file's own folder."""
    return (config_path.parent / value).resolve()
