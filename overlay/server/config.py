"""The server's configuration, read from TOML into a frozen dataclass.

docs/configuration.md and ``overlay example-config`` show every key.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay import bridge, codel, configfile, log, wire
from overlay.addressing import DEFAULT_POOL, OVERLAY, AddressPool
from overlay.exceptions import ConfigError
from overlay.server import rules
from overlay.server.auth import Credentials, PasswordHash
from overlay.server.bgp import BgpConfig, Neighbor
from overlay.server.firewall import Limits
from overlay.server.lan import PROTOCOLS as SERVICE_PROTOCOLS
from overlay.server.lan import Lan, Service, check_service, map_pool
from overlay.server.qoe import Quota
from overlay.tun import IFNAMSIZ

EXAMPLE = Path(__file__).with_name("example.toml")


DEFAULT_STATE_DIR = Path("/var/lib/overlay")
CONTROL_SOCKET = "control.sock"
MAX_WORKERS = 64


@dataclass(frozen=True)
class FirewallConfig:
    limits: Limits
    profiles: dict[str, rules.Profile]  # built-in ones and the operator's
    rules: list[dict[str, Any]]  # the config's rules, as specs with their numbers


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    path: str
    cert_file: Path
    key_file: Path
    names: tuple[str, ...]  # names devices reach the server by: the certificate must cover each
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
    queue_target: float  # CoDel (overlay.codel): seconds a standing queue may add
    queue_interval: float
    offload: bool  # grant segmentation offload to devices that ask for it
    routes: bool  # a /32 kernel route per tunnel (protocol 250), for a BGP daemon to announce
    bgp: BgpConfig | None  # what overlay bird-config writes; None: no [bgp] table
    lan: Lan  # [lan] and [[service]]: the routable pool, the management prefixes, services
    shared: Credentials | None  # the shared OVOC-style credential, if any
    auto_enroll: bool
    client_ca_file: Path | None  # CA of device certificates (mutual TLS); None: not asked for
    client_crl_file: Path | None  # the devices that CA revoked, reloaded with the certificate
    allow_weak_password: bool
    max_failures: int
    failure_window: float
    lockout: float
    max_vrfs: int  # VRFs (leases) per device, unless its enrolment says otherwise
    node: str  # this server's name in logs, status and metrics (a fleet tells nodes apart)
    tunnel_ttl: float  # seconds after which a silent node's tunnel rows expire (a fleet)
    state_dir: Path
    store_url: str | None  # a PostgreSQL URL (libpq's); None: SQLite files in state_dir
    store_password_file: Path | None  # the store's password, when PGPASSFILE does not give it
    log_level: str
    qoe_port: int | None
    qoe_quota: Quota
    admin: tuple[str, int] | None  # host and port of the admin listener, None when off
    admin_token_file: Path
    admin_names: frozenset[str]  # Host names the admin listener answers to, besides addresses
    metrics_need_token: bool
    firewall: FirewallConfig
    workers: int  # server processes sharing the port (overlay.server.workers); 1: no supervisor
    worker: int = 0  # which of them this process is (1…workers); 0: the server itself

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
    def rules_file(self) -> Path:
        """The rules as changed at run time (``overlay rule …``); absent until then."""
        return self.state_dir / "firewall-rules.json"

    @property
    def password_checked_file(self) -> Path:
        """The mark of a shared password hash found to be of no well-known password."""
        return self.state_dir / "password-checked"

    @property
    def control_socket(self) -> Path:
        """The operator's socket; a worker's own, which its supervisor asks, when a worker."""
        return self.state_dir / (f"worker-{self.worker}.sock" if self.worker else CONTROL_SOCKET)

    @property
    def relay_socket(self) -> Path:
        """Where the workers tell each other of new tunnels and failed logins (relay.py)."""
        return self.state_dir / "relay.sock"


def load_server_config(path: str | Path) -> ServerConfig:
    root = configfile.load(path)
    listen = root.table("listen", required=True)
    overlay = root.table("overlay")
    auth = root.table("auth", required=True)
    state = root.table("state")
    store = root.table("store")
    logging = root.table("log")
    node = root.table("node")
    qoe = root.table("qoe")
    admin = root.table("admin")
    firewall = root.table("firewall")
    bgp = root.table("bgp")
    lan = root.table("lan")

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
    state_dir = path_relative(root.path, state.string("dir", str(DEFAULT_STATE_DIR)))
    config = ServerConfig(
        host=listen.string("host", "0.0.0.0"),
        port=listen.integer("port", 443, low=1, high=65535),
        path=url_path,
        cert_file=listen.file("cert_file"),
        key_file=listen.file("key_file"),
        names=tuple(listen.strings("names", [])),
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
        queue_bytes=overlay.integer("queue_bytes", bridge.QUEUE_BYTES, low=mtu, high=64 << 20),
        queue_target=overlay.number("queue_target", codel.TARGET, low=0.0001, high=1),
        queue_interval=overlay.number("queue_interval", codel.INTERVAL, low=0.001, high=10),
        offload=overlay.flag("offload", True),
        routes=overlay.flag("routes", True),
        bgp=bgp_config(bgp, listen.string("host", "0.0.0.0")) if root.has("bgp") else None,
        lan=lan_config(lan, root.tables("service"), pool, listen.string("host", "0.0.0.0")),
        shared=shared,
        auto_enroll=auth.flag("auto_enroll", False),
        client_ca_file=auth.optional_file("client_ca_file"),
        client_crl_file=auth.optional_file("client_crl_file"),
        allow_weak_password=auth.flag("allow_weak_password", False),
        max_failures=auth.integer("max_failures", 10, low=1, high=10000),
        failure_window=auth.number("failure_window", 60.0, low=1, high=86400),
        lockout=auth.number("lockout", 60.0, low=1, high=86400),
        max_vrfs=auth.integer("max_vrfs", 8, low=1, high=65536),
        node=node_name(node),
        tunnel_ttl=node.number("tunnel_ttl", 30.0, low=3, high=3600),
        state_dir=state_dir,
        store_url=store_url(store),
        store_password_file=store.optional_file("password_file"),
        log_level=logging.choice("level", log.LEVELS, "info"),
        qoe_port=qoe.integer("port", 5001, low=1, high=65535)
        if qoe.flag("enabled", True)
        else None,
        qoe_quota=Quota(
            rate=qoe.number("rate", Quota.rate, low=0.001, high=100_000),
            burst=qoe.number("burst", Quota.burst, low=1, high=1_000_000),
            retention_days=qoe.number("retention_days", Quota.retention_days, low=0.01, high=36500),
            max_reports=qoe.integer("max_reports", Quota.max_reports, low=1, high=1_000_000_000),
        ),
        admin=admin_listen(admin),
        admin_token_file=path_relative(
            root.path, admin.string("token_file", str(state_dir / "admin-token"))
        ),
        metrics_need_token=admin.flag("metrics_need_token", False),
        admin_names=frozenset(name.lower() for name in admin.strings("names", [])),
        firewall=firewall_config(firewall),
        workers=listen.integer("workers", 1, low=1, high=MAX_WORKERS),
    )
    if config.client_crl_file is not None and config.client_ca_file is None:
        auth.fail("client_crl_file", "a CRL needs auth.client_ca_file, the CA that issued it")
    if config.offload:
        configfile.offload_room(overlay, "max_message", config.max_message)
        configfile.offload_room(overlay, "queue_bytes", config.queue_bytes)
    if config.store_password_file is not None and config.store_url is None:
        store.fail("password_file", "a password is for a PostgreSQL store: set store.url too")
    if config.bgp is not None and not config.routes:
        overlay.fail("routes", "must be true with [bgp]: BIRD announces the tunnels' routes")
    if config.workers > 1:
        workers_fit(config, listen, overlay)
    for table in (
        listen,
        overlay,
        auth,
        state,
        store,
        bgp,
        lan,
        logging,
        node,
        qoe,
        admin,
        firewall,
        root,
    ):
        table.done()
    return config


def workers_fit(config: ServerConfig, listen: configfile.Table, overlay: configfile.Table) -> None:
    """Refuse what several workers cannot share, naming the setting to change."""
    if not config.routes:
        overlay.fail(
            "routes", "must be true with listen.workers > 1: a /32 per tunnel finds its worker"
        )
    longest = len(config.tun_name) + len(f"w{config.workers}")
    if longest > IFNAMSIZ:
        overlay.fail(
            "tun_name",
            f"{config.tun_name!r} is too long for workers' TUNs ({config.tun_name}w1…): "
            f"at most {IFNAMSIZ - len(f'w{config.workers}')} characters",
        )


def bgp_config(table: configfile.Table, host: str) -> BgpConfig:
    """``[bgp]`` and its ``[[bgp.neighbor]]`` tables (at least one)."""
    default_id = host if host not in ("0.0.0.0", "") else None
    if not table.has("router_id") and default_id is None:
        table.fail("router_id", "is needed when listen.host is 0.0.0.0: the node's own address")
    neighbors = []
    for entry in table.tables("neighbor"):
        neighbors.append(
            Neighbor(entry.ipv4("address", ""), entry.integer("as", low=1, high=4_294_967_295))
        )
        entry.done()
    if not neighbors:
        table.fail("neighbor", "give at least one [[bgp.neighbor]] (address, as): a router")
    return BgpConfig(
        local_as=table.integer("local_as", low=1, high=4_294_967_295),
        router_id=table.ipv4("router_id", default_id or ""),
        neighbors=tuple(neighbors),
        bfd=table.flag("bfd", True),
        hold_time=table.integer("hold_time", 9, low=3, high=65535),
        bird_socket=Path(table.string("bird_socket", "/run/bird/bird.ctl")),
    )


def lan_config(
    table: configfile.Table, services: list[configfile.Table], pool: AddressPool, host: str
) -> Lan:
    """``[lan]`` (prefix, management) and the ``[[service]]`` tables."""
    listen = ipaddress.IPv4Address(host) if host not in ("0.0.0.0", "") else None
    prefix, block = None, None
    if table.has("prefix"):
        prefix = network(table, "prefix")
        if prefix.overlaps(OVERLAY):
            table.fail("prefix", f"{prefix} overlaps the overlay 169.254.0.0/16: give a LAN prefix")
        if listen is not None and listen in prefix:
            table.fail("prefix", f"{prefix} holds listen.host {listen}, the underlay")
        try:
            block = map_pool(prefix, pool)
        except ConfigError as exc:
            table.fail("prefix", str(exc))
    management = []
    for text in table.strings("management", []):
        net = parse_network(table, "management", text)
        if net.prefixlen < 8:
            table.fail("management", f"{net} is too wide: devices would route it all to the node")
        if net.overlaps(OVERLAY) or (prefix is not None and net.overlaps(prefix)):
            table.fail("management", f"{net} overlaps the overlay or lan.prefix: give LAN networks")
        if listen is not None and listen in net:
            table.fail(
                "management", f"{net} holds listen.host {listen}: devices would lose the node"
            )
        management.append(net)
    lan = Lan(prefix, block, tuple(management))
    entries: list[Service] = []
    for entry in services:
        protocol = entry.choice("protocol", SERVICE_PROTOCOLS, "udp")
        port = entry.integer("port", low=1, high=65535)
        host, _, to_port = entry.string("to").partition(":")
        try:
            service = Service(
                protocol,
                port,
                ipaddress.IPv4Address(host),
                int(to_port) if to_port else port,
                entry.optional_str("name") or "",
            )
        except ValueError:
            entry.fail("to", f"{entry.string('to')!r} is not ADDRESS or ADDRESS:PORT")
        if not 1 <= service.host_port <= 65535:
            entry.fail("to", f"port {service.host_port} is outside 1-65535")
        try:
            check_service(service, lan)
        except ConfigError as exc:
            entry.fail("to", str(exc))
        if any((s.protocol, s.port) == (protocol, port) for s in entries):
            entry.fail("port", f"{protocol}/{port} has a service entry already")
        entry.done()
        entries.append(service)
    return Lan(prefix, block, tuple(management), tuple(entries))


def network(table: configfile.Table, key: str) -> ipaddress.IPv4Network:
    return parse_network(table, key, table.string(key))


def parse_network(table: configfile.Table, key: str, text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as exc:
        table.fail(key, f"{text!r} is not an IPv4 network like 198.51.100.0/24: {exc}")


def store_url(table: configfile.Table) -> str | None:
    """``store.url``: unset or ``sqlite:`` (the state directory's files), or a libpq URL
    without a password (a URL is seen in ``ps``, logs and shell history)."""
    url = table.string("url", "sqlite:")
    if url == "sqlite:":
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        table.fail("url", f"{url!r} is neither sqlite: nor a postgresql:// URL")
    import psycopg.conninfo  # libpq parses it, as it will connect

    try:
        parts = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:  # libpq's message
        table.fail("url", f"not a PostgreSQL URL: {str(exc).strip().splitlines()[0]}")
    if "password" in parts:
        table.fail(
            "url",
            "has a password: put it in store.password_file or in a PGPASSFILE, not in the URL",
        )
    return url


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def node_name(table: configfile.Table) -> str:
    """``node.name``, by default the host's name (its first label, as ``hostname -s``)."""
    if table.has("name"):
        name = table.string("name")
        if not NODE_NAME.fullmatch(name):
            table.fail("name", f"{name!r} is not a node name (1-63 of A-Z a-z 0-9 . _ -)")
        return name
    host = socket.gethostname().split(".")[0]
    if not NODE_NAME.fullmatch(host):
        table.fail("name", f"the host name {host!r} does not make a node name: set node.name")
    return host


def firewall_config(table: configfile.Table) -> FirewallConfig:
    limits = Limits(
        max_flows=table.integer("max_flows", Limits.max_flows, low=1, high=1_000_000),
        tcp=table.number("tcp_timeout", Limits.tcp, low=1, high=604800),
        tcp_opening=table.number("tcp_opening_timeout", Limits.tcp_opening, low=1, high=3600),
        tcp_closing=table.number("tcp_closing_timeout", Limits.tcp_closing, low=1, high=3600),
        udp=table.number("udp_timeout", Limits.udp, low=1, high=604800),
        icmp=table.number("icmp_timeout", Limits.icmp, low=1, high=3600),
        other=table.number("other_timeout", Limits.other, low=1, high=604800),
        max_total_flows=table.integer(
            "max_total_flows", Limits.max_total_flows, low=1, high=100_000_000
        ),
        refused_rate=table.number("refused_rate", Limits.refused_rate, low=1, high=10_000_000),
        refused_burst=table.number("refused_burst", Limits.refused_burst, low=1, high=100_000_000),
        sip_max_expires=table.number("sip_max_expires", Limits.sip_max_expires, low=1, high=604800),
    )
    profiles_dir = table.optional_str("profiles_dir")
    try:
        profiles = rules.load_profiles(
            path_relative(table.path, profiles_dir) if profiles_dir else None
        )
    except ConfigError as exc:
        table.fail("profiles_dir", str(exc))
    specs: list[dict[str, Any]] = []
    for i, rule in enumerate(table.tables("rule"), 1):
        spec = rule_spec(rule)
        try:
            rules.make_rule(i * rules.STEP, spec, profiles)
        except rules.RuleError as exc:
            rule.fail_here(str(exc))
        rule.done()
        specs.append({"number": i * rules.STEP, **spec})
    if not table.has("rule"):
        specs = [{"number": rules.STEP, **spec} for spec in rules.DEFAULT_RULES]
    return FirewallConfig(limits, profiles, specs)


def rule_spec(table: configfile.Table) -> dict[str, Any]:
    """A ``[[firewall.rule]]`` as a spec for :func:`rules.make_rule` (which checks it)."""
    spec: dict[str, Any] = {}
    for key in ("action", "profile", "direction", "protocol", "sip", "comment"):
        value = table.optional_str(key)
        if value is not None:
            spec[key] = value
    if table.has("ports"):
        ports = (
            table.integer("ports", low=1, high=65535)
            if isinstance(table.raw("ports"), int)
            else table.string("ports")
        )
        spec["ports"] = str(ports)
    for key in ("sources", "destinations"):
        if table.has(key):
            spec[key] = table.strings(key)
    return spec


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
