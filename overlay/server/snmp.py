"""The server's sessions and counters over SNMP: net-snmp's ``pass_persist`` protocol, pure.

snmpd runs ``overlay snmp-agent --config server.toml`` and asks it, over
stdin/stdout, for ``get`` and ``getnext`` under the subtree of OVERLAY-MIB
(overlay/server/OVERLAY-MIB.txt). The values come from the same status that
``overlay status`` shows. The subtree sits under net-snmp's playpen arc,
1.3.6.1.4.1.8072.9999.9999, until the project has a private enterprise number.

Protocol (snmpd.conf(5), "pass_persist"): ``PING`` is answered ``PONG``;
``get`` or ``getnext`` followed by an OID is answered with three lines (OID,
type, value) or ``NONE``.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right

from overlay.status import ServerStatus

ROOT = (1, 3, 6, 1, 4, 1, 8072, 9999, 9999, 42)

Oid = tuple[int, ...]
Value = tuple[str, str]  # net-snmp type name, value as text


def parse_oid(text: str) -> Oid:
    return tuple(int(part) for part in text.strip().strip(".").split(".") if part)


def dotted(oid: Oid) -> str:
    return "." + ".".join(map(str, oid))


def table(status: ServerStatus) -> list[tuple[Oid, Value]]:
    """Every object of the subtree, sorted by OID."""
    server, totals = status["server"], status["totals"]
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
        index = tuple(ipaddress.IPv4Address(session["address"]).packed)
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
