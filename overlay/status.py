"""The status that every reader shares, typed: ``overlay status``, ``/metrics``, SNMP,
the admin API, the status page, ``appliance status`` and the lab.

The server and the agent build these dictionaries; the control socket carries
them as JSON. Readers take them as these types (:func:`server_status`,
:func:`agent_status`), so that mypy catches a renamed key in any of them.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict, cast


class Traffic(TypedDict):
    """What one end of a tunnel (or all of them) carried and dropped."""

    rx_bytes: int
    rx_packets: int
    rx_frames: int
    tx_bytes: int
    tx_packets: int
    tx_frames: int
    drops: dict[str, int]


class SessionStatus(Traffic):
    """One open tunnel on the server."""

    device: str
    vrf: str
    address: str
    lan_address: str | None  # its routable address ([lan] prefix); None without one
    peer: str
    session: str
    state: str
    since: float
    idle: float
    offload: bool
    flows: int
    # and "worker", its worker's number, in a supervisor's status (listen.workers > 1)


class StoreStatus(TypedDict):
    backend: str  # sqlite or postgresql
    up: bool  # whether the last request to the store succeeded
    races: int  # new leases another node won first (a (device, VRF) or an address)
    outages: int  # times the store became unreachable


class NodeStatus(TypedDict):
    """The server process itself."""

    node: str
    version: str
    overlay: str
    tun: str
    listen: str
    started: float
    leases: int
    pool: str
    pool_size: int
    pending: int
    handshakes: int
    enrolled: int
    store: StoreStatus
    taken_over: int  # tunnels closed for a newer one of their (device, VRF) on another node
    routes: RoutesStatus | None  # None: overlay.routes is off
    bird: BirdStatus | None  # None: no [bgp]
    lan: LanStatus | None  # None: no [lan] or [[service]]
    # a supervisor's (listen.workers > 1): lines of the workers' relay it could not pass to
    # a worker that had stopped reading
    relay_dropped: NotRequired[int]


class BirdStatus(TypedDict):
    socket: str
    up: bool | None  # whether BIRD answered on its socket last time; None: not looked yet


class RoutesStatus(TypedDict):
    installed: int  # /32 kernel routes of this node's tunnels
    errors: dict[str, int]  # route changes the kernel refused, by operation


class LeaseStatus(TypedDict):
    device: str
    vrf: str
    address: str
    lan_address: str | None


class LanStatus(TypedDict):
    prefix: str | None  # the routable pool
    maps: str | None  # the overlay block it maps, host bits kept
    management: list[str]  # prefixes the hello tells devices to route into the tunnel
    services: list[str]  # [[service]] entries: proto/port -> host:port


class FirewallStatus(TypedDict):
    rules: int
    rules_from: str
    flows: int
    opened: int
    unmatched: int
    hits: list[tuple[int, str, int]]  # (rule number, action, new flows it decided)
    max_flows: int
    sip: dict[str, int]  # SIP messages read on flows of rules with a SIP option, by effect
    sip_held: int  # flows a SIP registration holds open now


class Flow(TypedDict):
    """One live flow of a device address, as the firewall describes it."""

    protocol: str
    opened_by: str
    remote: str
    remote_port: int
    device_port: int
    state: str
    rule: int | None
    packets: int
    since: float
    idle: float  # seconds since its last packet
    expires_in: float
    sip_held: bool  # a SIP registration made through it keeps it open


class FlowStatus(Flow):
    """A flow with the lease it belongs to (``overlay status DEVICE``)."""

    vrf: str
    address: str


class CertificateStatus(TypedDict):
    """The server's certificate in use, and its reloads (times in seconds since the epoch)."""

    file: str
    subject: str
    names: list[str]
    serial: str
    not_after: float
    expires_in: float
    loaded: float
    reloads: int
    failed_reloads: int
    last_error: str | None
    crl_file: str | None
    crl_next_update: float | None
    revoked: int | None


class ServerStatus(TypedDict):
    server: NodeStatus
    sessions: list[SessionStatus]
    leases: list[LeaseStatus]
    refusals: dict[str, int]
    drops: dict[str, int]
    totals: Traffic
    qoe: dict[str, int] | None
    firewall: FirewallStatus
    certificate: CertificateStatus | None
    flows: NotRequired[list[FlowStatus]]  # only in one device's view (overlay status DEVICE)
    fleet: NotRequired[list[FleetTunnel]]  # only with a shared store: every node's tunnels
    workers: NotRequired[list[WorkerStatus]]  # only with listen.workers > 1


class WorkerStatus(TypedDict):
    """One worker process of a server with ``listen.workers`` > 1."""

    number: int
    node: str  # its name in the fleet's tunnel table
    tun: str
    pid: int | None  # None: not running (restarting)
    up: bool  # whether it answered this status
    sessions: int
    restarts: int  # times it died and was started again


class FleetTunnel(TypedDict):
    """A tunnel of the fleet, as the store records it (``overlay status`` with PostgreSQL)."""

    device: str
    vrf: str
    node: str
    session: str
    since: float
    seen_ago: float  # seconds since its node last kept it alive


class TunnelStatus(Traffic):
    """One VRF's tunnel on a device (``appliance status``)."""

    device: str | None
    vrf: str
    backend: str
    state: str
    since: float
    server: str | None
    address: str | None
    tun: str | None
    offload: bool
    last_error: str | None
    servers: list[str]
    failovers: int


class AgentStatus(TypedDict):
    device: str
    version: str
    tunnels: list[TunnelStatus]


def server_status(data: Any) -> ServerStatus:
    """A server's status as read from its control socket or admin API."""
    return cast(ServerStatus, data)


def agent_status(data: Any) -> AgentStatus:
    """An agent's status as read from its control socket."""
    return cast(AgentStatus, data)
