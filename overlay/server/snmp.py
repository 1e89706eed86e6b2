"""The server's sessions, counters and firewall over SNMP: net-snmp's ``pass_persist``
protocol, pure.

snmpd runs ``overlay snmp-agent --config server.toml`` and asks it, over
stdin/stdout, for ``get`` and ``getnext`` under the subtree of OVERLAY-MIB
(overlay/server/OVERLAY-MIB.txt). The values come from the same status that
``overlay status`` shows, and the flows from ``overlay status DEVICE`` for
every device. The subtree sits under net-snmp's playpen arc,
1.3.6.1.4.1.8072.9999.9999, until the project has a private enterprise number.

Protocol (snmpd.conf(5), "pass_persist"): ``PING`` is answered ``PONG``;
``get`` or ``getnext`` followed by an OID is answered with three lines (OID,
type, value) or ``NONE``.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right

from overlay.status import FlowStatus, ServerStatus

ROOT = (1, 3, 6, 1, 4, 1, 8072, 9999, 9999, 42)

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17}
Oid = tuple[int, ...]
Value = tuple[str, str]  # net-snmp type name, value as text


def parse_oid(text: str) -> Oid:
    return tuple(int(part) for part in text.strip().strip(".").split(".") if part)


def dotted(oid: Oid) -> str:
    return "." + ".".join(map(str, oid))


def address(text: str) -> Oid:
    """An IPv4 address as four sub-identifiers (how SNMP indexes by IpAddress)."""
    return tuple(ipaddress.IPv4Address(text).packed)


def table(status: ServerStatus, flows: list[FlowStatus], now: float) -> list[tuple[Oid, Value]]:
    """Every object of the subtree, sorted by OID; ``now`` is the wall clock."""
    server, totals, firewall = status["server"], status["totals"], status["firewall"]
    scalars = [
        (1, ("gauge", str(len(status["sessions"])))),  # ovlSessions
        (2, ("gauge", str(server["leases"]))),  # ovlLeases
        (3, ("gauge", str(server["pending"]))),  # ovlPendingConnections
        (4, ("counter64", str(server["handshakes"]))),  # ovlHandshakes
        (5, ("counter64", str(totals["rx_bytes"]))),  # ovlRxBytes
        (6, ("counter64", str(totals["tx_bytes"]))),  # ovlTxBytes
        (7, ("counter64", str(sum(status["drops"].values())))),  # ovlDrops
        (8, ("counter64", str(sum(status["refusals"].values())))),  # ovlRefusals
    ]
    objects: list[tuple[Oid, Value]] = [((*ROOT, 1, n, 0), value) for n, value in scalars]
    for session in status["sessions"]:  # ovlSessionTable, indexed by the overlay address
        index = address(session["address"])
        columns = [
            (1, ("ipaddress", session["address"])),  # ovlSessionAddress
            (2, ("string", session["device"])),  # ovlSessionDevice
            (3, ("string", session["vrf"])),  # ovlSessionVrf
            (4, ("string", session["peer"])),  # ovlSessionPeer
            (5, ("counter64", str(session["rx_bytes"]))),  # ovlSessionRxBytes
            (6, ("counter64", str(session["tx_bytes"]))),  # ovlSessionTxBytes
            (7, ("counter64", str(sum(session["drops"].values())))),  # ovlSessionDrops
        ]
        objects += [((*ROOT, 2, 1, 1, column, *index), value) for column, value in columns]
    drops, sip = status["drops"], firewall.get("sip", {})
    counters = [
        (1, ("gauge", str(firewall["flows"]))),  # ovlFlows
        (2, ("counter64", str(firewall["opened"]))),  # ovlFlowsOpened
        (3, ("counter64", str(drops.get("policy", 0)))),  # ovlFlowDropsPolicy
        (4, ("counter64", str(drops.get("flow-limit", 0)))),  # ovlFlowDropsLimit
        (5, ("counter64", str(firewall["unmatched"]))),  # ovlFlowsUnmatched
        (6, ("gauge", str(firewall.get("sip_held", 0)))),  # ovlSipHeldFlows
        (7, ("counter64", str(sip.get("registered", 0)))),  # ovlSipRegistrations
        (8, ("counter64", str(sip.get("unparsable", 0)))),  # ovlSipUnparsable
    ]
    objects += [((*ROOT, 3, n, 0), value) for n, value in counters]
    for number, action, hits in firewall["hits"]:  # ovlRuleTable, by rule number
        columns = [
            (1, ("gauge", str(number))),  # ovlRuleNumber
            (2, ("string", action)),  # ovlRuleAction
            (3, ("counter64", str(hits))),  # ovlRuleHits
        ]
        objects += [((*ROOT, 4, 1, column, number), value) for column, value in columns]
    for flow in flows:  # ovlFlowTable
        protocol = PROTOCOLS.get(flow["protocol"]) or int(flow["protocol"])
        index = (
            *address(flow["address"]),
            protocol,
            *address(flow["remote"]),
            flow["remote_port"],
            flow["device_port"],
        )
        columns = [
            (1, ("ipaddress", flow["address"])),  # ovlFlowDeviceAddress
            (2, ("gauge", str(protocol))),  # ovlFlowProtocol
            (3, ("ipaddress", flow["remote"])),  # ovlFlowRemoteAddress
            (4, ("gauge", str(flow["remote_port"]))),  # ovlFlowRemotePort
            (5, ("gauge", str(flow["device_port"]))),  # ovlFlowDevicePort
            (6, ("integer", "2" if flow["opened_by"] == "management" else "1")),  # ovlFlowOpenedBy
            (7, ("gauge", str(max(0, int(now - flow["since"]))))),  # ovlFlowAge
            (8, ("gauge", str(int(flow["idle"])))),  # ovlFlowIdle
            (9, ("integer", "1" if flow["sip_held"] else "2")),  # ovlFlowSipHeld
            (10, ("gauge", str(flow["rule"] or 0))),  # ovlFlowRule
            (11, ("counter64", str(flow["packets"]))),  # ovlFlowPackets
        ]
        objects += [((*ROOT, 5, 1, column, *index), value) for column, value in columns]
    return sorted(objects)


def answer(command: str, oid: Oid, objects: list[tuple[Oid, Value]]) -> list[str]:
    """The reply lines to ``get`` or ``getnext`` of ``oid``."""
    oids = [o for o, _ in objects]
    if command == "get":
        position = bisect_right(oids, oid) - 1
        if position >= 0 and oids[position] == oid:
            return [dotted(oid), *objects[position][1]]
        return ["NONE"]
    position = bisect_right(oids, oid)
    if position < len(objects):
        found, value = objects[position]
        return [dotted(found), *value]
    return ["NONE"]
