"""The stateful overlay firewall: a flow table per device address. Pure logic.

Theory of operation. Every IPv4 packet between the server side and a device is
keyed by (protocol, remote address, remote port, device port), the remote being
the far end on the server side. A packet of a live flow passes and keeps the
flow alive; a packet of no flow opens one if the rules allow it in its
direction, or is dropped (``policy``). So replies always pass, and so does
anything the other side sends within an allowed flow. ICMP echo opens a flow in
either direction without a rule (ping is an operator's first check); an echo
reply passes only within one; an ICMP error passes when the packet it quotes
belongs to a live flow, and one from a device only when it quotes a packet the
device itself received (to its own address) and is no redirect or source
quench. Non-first fragments pass when their first fragment did.

A device address holds at most ``max_flows`` flows (Allied Telesis' limit on
the sessions of one device): past it new flows are dropped as ``flow-limit``.
Flows end after a per-protocol idle time; a TCP flow that saw no reply yet, or
saw FIN or RST, ends sooner. A full table refuses a new flow at once: it is
swept for ended flows only when one can have ended (the earliest expiry seen at
the last sweep has passed) and at most once per ``SWEEP_EVERY`` seconds, so a
device that sends a flood of new flows costs one dictionary lookup per packet,
not a walk of its table (it cost 42 µs a packet). Like Linux conntrack's
default, a TCP packet that is not a SYN may open a flow, so connections survive
a server restart once the side that the rules allow sends again.

A flow that a rule with a SIP option allowed is read for SIP registrations
(:mod:`overlay.server.sip`): while one made through it lasts, the flow stays
open however quiet it is ("held"), and new flows from the registrar (from any
address with ``any-proxy``) to the device's SIP port or registered contact port
pass, as replies do, without meeting the rules.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass
from struct import unpack_from

from overlay import status
from overlay.counters import Drop
from overlay.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from overlay.server.rules import FROM_DEVICE, PROTOCOL_NAMES, TO_DEVICE, Ruleset
from overlay.server.sip import Registrations, SipError, parse

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})  # unreachable, quench, redirect, time exceeded, param
# What a device may tell the server side: not to slow down (quench, long deprecated) nor to
# route elsewhere (redirect), only that something it was sent could not be delivered.
DEVICE_ICMP_ERRORS = frozenset({3, 11, 12})
TCP_FIN_OR_RST = 0x05
MORE_FRAGMENTS = 0x20
FRAGMENT_TIMEOUT = 30.0
SWEEP_EVERY = 1.0  # seconds: a full table is swept at most this often

# (protocol, remote address, remote port or ICMP id, device port)
FlowKey = tuple[int, bytes, int, int]


@dataclass(frozen=True)
class Limits:
    """Flow limits, idle timeouts in seconds, and what a device may send that is refused
    (``[firewall]`` in server.toml)."""

    max_flows: int = 1024  # per device address
    max_total_flows: int = 262_144  # all addresses together: about 180 MB of flows
    tcp: float = 3600.0  # an established TCP flow
    tcp_opening: float = 30.0  # a TCP flow that saw no reply yet
    tcp_closing: float = 10.0  # a TCP flow that saw FIN or RST
    udp: float = 120.0
    icmp: float = 30.0
    other: float = 600.0
    refused_rate: float = 1000.0  # refused packets a second a session may send, sustained
    refused_burst: float = 10_000.0  # and at once; past both it is closed (1008)
    sip_max_expires: float = 86_400.0  # a SIP registration holds its flow at most this long


class Flow:
    """One flow; ``to_device`` tells which side opened it."""

    __slots__ = (
        "closing",
        "created",
        "expires",
        "held",
        "packets",
        "replied",
        "rule",
        "seen",
        "sip",
        "to_device",
    )

    def __init__(self, to_device: bool, rule: int | None, now: float) -> None:
        self.to_device = to_device
        self.rule = rule  # the number of the rule that allowed it; None for ICMP echo
        self.created = now
        self.expires = now
        self.seen = now  # its last packet
        self.packets = 0
        self.replied = False
        self.closing = False
        self.sip: Registrations | None = None  # read for SIP registrations
        self.held = 0.0  # a SIP registration keeps it open until then


class FlowTable:
    """The flows of one device address, and the fragments still expected."""

    __slots__ = ("flows", "fragments", "next_expiry", "recent", "sip", "sweeps", "swept")

    def __init__(self) -> None:
        self.flows: dict[FlowKey, Flow] = {}
        self.fragments: dict[tuple[bytes, int, bytes, bool], float] = {}
        # The flow of the last packet each way, by (protocol, addresses and ports as sent):
        # bulk transfers send runs of packets of one flow, which then skip the key building.
        self.recent: list[tuple[int, bytes, Flow] | None] = [None, None]
        self.next_expiry = 0.0  # nothing ends before this (the earliest end at the last sweep)
        self.swept = float("-inf")
        self.sweeps = 0
        self.sip: list[tuple[FlowKey, Flow]] = []  # the flows read for SIP registrations

    def sweep(self, now: float) -> int:
        """Forget expired flows and fragments; return how many flows ended."""
        expired = [key for key, flow in self.flows.items() if flow.expires <= now]
        for key in expired:
            del self.flows[key]
        if self.sip:
            self.sip = [(k, f) for k, f in self.sip if self.flows.get(k) is f]
        for fragment in [f for f, until in self.fragments.items() if until <= now]:
            del self.fragments[fragment]
        self.next_expiry = min(
            min((flow.expires for flow in self.flows.values()), default=float("inf")),
            min(self.fragments.values(), default=float("inf")),
        )
        self.swept = now
        self.sweeps += 1
        return len(expired)

    def describe(self, now: float, wall: float) -> list[status.Flow]:
        """The live flows, for ``overlay status DEVICE``."""
        return [
            {
                "protocol": PROTOCOL_NAMES.get(key[0], str(key[0])),
                "opened_by": "management" if flow.to_device else "device",
                "remote": ".".join(str(b) for b in key[1]),
                "remote_port": key[2],
                "device_port": key[3],
                "rule": flow.rule,
                "packets": flow.packets,
                "state": flow_state(key[0], flow),
                "since": round(wall - (now - flow.created), 3),
                "idle": round(now - flow.seen, 1),
                "expires_in": round(flow.expires - now, 1),
                "sip_held": flow.held > now,
            }
            for key, flow in self.flows.items()
            if flow.expires > now
        ]


class Firewall:
    """Decides each packet against a device's flow table and the rules."""

    def __init__(self, ruleset: Ruleset, limits: Limits) -> None:
        self.ruleset = ruleset
        self.limits = limits
        self.opened = 0  # flows opened since the start
        self.flows = 0  # flows in all tables (ended ones too, until swept)
        self.sip: Counter[str] = Counter()  # SIP messages read, by what they did

    def check(
        self,
        table: FlowTable,
        packet: bytes | memoryview,
        to_device: bool,
        now: float,
        may_open: bool = True,
    ) -> Drop | None:
        """Return why ``packet`` must be dropped, or None to let it pass.

        ``packet`` is a whole IPv4 packet (the router checked version and
        length); ``to_device`` is its direction. Without ``may_open`` it passes
        only within a live flow (a device's replies to the management LAN).
        """
        header = (packet[0] & 0x0F) << 2
        protocol = packet[9]
        if header == 20 and not packet[6] & 0x3F and not packet[7]:  # no options, no fragment
            recent = table.recent[to_device]
            if (
                recent is not None
                and recent[0] == protocol
                and recent[2].expires > now
                and recent[1] == packet[12:24]
            ):
                self._keep(recent[2], packet, header, protocol, to_device, now)
                return None
        remote = bytes(packet[12:16] if to_device else packet[16:20])
        if packet[6] & 0x1F or packet[7]:  # a fragment offset: no transport header here
            until = table.fragments.get((bytes(packet[4:6]), protocol, remote, to_device))
            return None if until is not None and until > now else Drop.POLICY
        port: int | None = None
        opens = True  # may this packet open a flow (subject to the rules)?
        ruled = True  # do the rules decide, or is it ICMP echo (always allowed)?
        if protocol in (PROTO_TCP, PROTO_UDP):
            if len(packet) < header + 4:
                return Drop.MALFORMED
            key = flow_key(packet, header, protocol, remote, to_device)
            port = key[3] if to_device else key[2]  # the destination port
        elif protocol == PROTO_ICMP:
            if len(packet) < header + 8:
                return Drop.MALFORMED
            kind = packet[header]
            if kind in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
                key = flow_key(packet, header, protocol, remote, to_device)
                opens = kind == ICMP_ECHO_REQUEST
                ruled = False
            elif kind in ICMP_ERRORS:
                if not to_device and kind not in DEVICE_ICMP_ERRORS:
                    return Drop.POLICY
                return self._error(table, packet, header + 8, to_device, now)
            else:
                key = (protocol, remote, kind, 0)
        else:
            key = flow_key(packet, header, protocol, remote, to_device)
        flows = table.flows
        flow = flows.get(key)
        if flow is None or flow.expires <= now:
            if not opens or not may_open:
                return Drop.POLICY
            number, sip = None, None
            pinhole = None
            if to_device and table.sip:
                pinhole = self._pinhole(table, protocol, remote, port, now)
            if pinhole is not None:
                number = pinhole[0]
            elif ruled:
                direction = TO_DEVICE if to_device else FROM_DEVICE
                rule = self.ruleset.decide(direction, protocol, port, int.from_bytes(remote, "big"))
                if rule is None or rule.action != "allow":
                    return Drop.POLICY
                number = rule.number
                if rule.sip:
                    sip = rule.sip_mode(direction, protocol, port)
            if len(flows) >= self.limits.max_flows:
                self.reclaim(table, now)
                if len(flows) >= self.limits.max_flows:
                    return Drop.FLOW_LIMIT
            if self.flows >= self.limits.max_total_flows:
                self.reclaim(table, now)
                if self.flows >= self.limits.max_total_flows:
                    return Drop.FLOW_LIMIT
            flow = flows[key] = Flow(to_device, number, now)
            self.opened += 1
            self.flows += 1
            if sip is not None:
                device = socket.inet_ntoa(bytes(packet[12:16]))
                flow.sip = Registrations(sip, device, self.limits.sip_max_expires)
                table.sip.append((key, flow))
        self._keep(flow, packet, header, protocol, to_device, now)
        if header == 20:
            table.recent[to_device] = (protocol, bytes(packet[12:24]), flow)
        if packet[6] & MORE_FRAGMENTS:
            self._expect_fragments(table, packet, protocol, remote, to_device, now)
        return None

    def sweep(self, table: FlowTable, now: float) -> None:
        """Forget the ended flows and fragments of ``table``."""
        self.flows -= table.sweep(now)

    def reclaim(self, table: FlowTable, now: float) -> None:
        """Sweep a full table, if something in it can have ended and it was not swept in
        the last ``SWEEP_EVERY`` seconds; otherwise do nothing, at once."""
        if now >= table.next_expiry and now - table.swept >= SWEEP_EVERY:
            self.sweep(table, now)

    def _keep(
        self,
        flow: Flow,
        packet: bytes | memoryview,
        header: int,
        protocol: int,
        to_device: bool,
        now: float,
    ) -> None:
        """Count a packet of ``flow`` and push its end out by the protocol's idle time."""
        if flow.to_device != to_device:
            flow.replied = True
        flow.packets += 1
        flow.seen = now
        if flow.sip is not None:
            self._read_sip(flow, flow.sip, packet, header, protocol, to_device, now)
        limits = self.limits
        if protocol == PROTO_TCP:
            if len(packet) >= header + 14 and packet[header + 13] & TCP_FIN_OR_RST:
                flow.closing = True
            if flow.closing:
                flow.expires = now + limits.tcp_closing
            else:
                flow.expires = now + (limits.tcp if flow.replied else limits.tcp_opening)
        elif protocol == PROTO_UDP:
            flow.expires = now + limits.udp
        elif protocol == PROTO_ICMP:
            flow.expires = now + limits.icmp
        else:
            flow.expires = now + limits.other
        if flow.held > flow.expires:
            flow.expires = flow.held

    def _read_sip(
        self,
        flow: Flow,
        registrations: Registrations,
        packet: bytes | memoryview,
        header: int,
        protocol: int,
        to_device: bool,
        now: float,
    ) -> None:
        """Read the SIP messages of a packet of ``flow``; a registration holds the flow."""
        if protocol == PROTO_UDP:
            payload = packet[header + 8 :]
            if not bytes(payload[:8]).strip(b"\r\n\0 "):
                return  # a keep-alive, or nothing
            try:
                messages = [parse(payload)]
            except SipError:
                self.sip["unparsable"] += 1
                return
        else:
            if len(packet) < header + 20:
                return
            offset = header + ((packet[header + 12] >> 4) << 2)
            seq = unpack_from("!I", packet, header + 4)[0]
            messages, lost = registrations.streams[to_device].feed(seq, packet[offset:])
            if lost:
                self.sip["unparsable"] += 1
        for message in messages:
            try:
                if to_device:
                    event = registrations.to_device(message, now)
                else:
                    event = registrations.from_device(message)
            except SipError:
                event = "unparsable"
            if event is not None:
                self.sip[event] += 1
        flow.held = registrations.until(now)

    def _pinhole(
        self, table: FlowTable, protocol: int, remote: bytes, port: int | None, now: float
    ) -> tuple[int | None] | None:
        """A new to-device flow that a live registration lets in: (the number of the rule
        that allowed the registration's flow,), or None."""
        for key, flow in table.sip:
            registrations = flow.sip
            if key[0] != protocol or registrations is None or flow.held <= now:
                continue
            if port != key[3] and port not in registrations.contact_ports(now):
                continue
            if key[1] == remote:
                self.sip["from-registrar"] += 1
                return (flow.rule,)
            if registrations.mode == "any-proxy":
                self.sip["from-other-proxy"] += 1
                return (flow.rule,)
        return None

    def _error(
        self,
        table: FlowTable,
        packet: bytes | memoryview,
        quoted: int,
        to_device: bool,
        now: float,
    ) -> Drop | None:
        """An ICMP error passes when the packet it quotes (sent the other way) has a live flow."""
        if len(packet) < quoted + 20:
            return Drop.MALFORMED
        inner = quoted + ((packet[quoted] & 0x0F) << 2)
        protocol = packet[quoted + 9]
        if len(packet) < inner + 8:
            return Drop.MALFORMED
        if not to_device and packet[quoted + 16 : quoted + 20] != packet[12:16]:
            return Drop.POLICY  # a device quotes only what was sent to itself
        # The quoted packet went the other way: towards the remote when the error goes
        # to the device, towards the device when the error comes from it.
        remote = bytes(
            packet[quoted + 16 : quoted + 20] if to_device else packet[quoted + 12 : quoted + 16]
        )
        flow = table.flows.get(flow_key(packet, inner, protocol, remote, not to_device))
        return None if flow is not None and flow.expires > now else Drop.POLICY

    def _expect_fragments(
        self,
        table: FlowTable,
        packet: bytes | memoryview,
        protocol: int,
        remote: bytes,
        to_device: bool,
        now: float,
    ) -> None:
        fragments = table.fragments
        if len(fragments) >= self.limits.max_flows:
            self.reclaim(table, now)
            if len(fragments) >= self.limits.max_flows:
                return  # the rest of this packet will be dropped: better than growing
        fragments[(bytes(packet[4:6]), protocol, remote, to_device)] = now + FRAGMENT_TIMEOUT


def flow_key(
    packet: bytes | memoryview, offset: int, protocol: int, remote: bytes, to_device: bool
) -> FlowKey:
    """The flow of a packet whose transport header (long enough) starts at ``offset``:
    ports for TCP and UDP, the identifier for ICMP echo, nothing for other protocols."""
    if protocol in (PROTO_TCP, PROTO_UDP):
        source, destination = unpack_from("!HH", packet, offset)
        if to_device:
            return (protocol, remote, source, destination)
        return (protocol, remote, destination, source)
    if protocol == PROTO_ICMP:
        return (protocol, remote, unpack_from("!H", packet, offset + 4)[0], 0)
    return (protocol, remote, 0, 0)


def flow_state(protocol: int, flow: Flow) -> str:
    if protocol != PROTO_TCP:
        return "answered" if flow.replied else "unanswered"
    if flow.closing:
        return "closing"
    return "established" if flow.replied else "opening"
