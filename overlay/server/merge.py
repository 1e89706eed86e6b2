"""What several workers answer, as the one server an operator sees (``listen.workers``).

Counts add up; what the workers share (the store's leases, the rules, the
certificate) is read once; every worker's sessions and flows are listed. Pure
functions of the workers' answers: :mod:`overlay.server.workers` asks them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from overlay.status import (
    FirewallStatus,
    LeaseStatus,
    NodeStatus,
    ServerStatus,
    SessionStatus,
    Traffic,
    WorkerStatus,
)


def status(
    answers: Mapping[int, ServerStatus],
    node: str,
    started: float,
    refusals: Mapping[str, int],
    workers: list[WorkerStatus],
) -> ServerStatus:
    """One status of the server ``node`` from its running workers' (at least one), by
    worker number; each session says which worker holds it."""
    parts = list(answers.values())
    first = parts[0]
    servers = [part["server"] for part in parts]
    leases = union_of_leases(part["leases"] for part in parts)
    server: NodeStatus = {
        **first["server"],
        "node": node,
        "tun": ",".join(s["tun"] for s in servers),
        "started": started,
        "leases": len(leases),
        "pending": sum(s["pending"] for s in servers),
        "handshakes": sum(s["handshakes"] for s in servers),
        "enrolled": max(s["enrolled"] for s in servers),
        "store": {
            "backend": first["server"]["store"]["backend"],
            "up": all(s["store"]["up"] for s in servers),
            "races": sum(s["store"]["races"] for s in servers),
            "outages": sum(s["store"]["outages"] for s in servers),
        },
        "taken_over": sum(s["taken_over"] for s in servers),
    }
    routes = [s["routes"] for s in servers if s["routes"] is not None]
    if routes:
        server["routes"] = {
            "installed": sum(r["installed"] for r in routes),
            "errors": added(r["errors"] for r in routes),
        }
    qoe = [part["qoe"] for part in parts if part["qoe"] is not None]
    return {
        "server": server,
        "sessions": sorted(
            (held_by(s, number) for number, part in answers.items() for s in part["sessions"]),
            key=lambda s: _address_key(s["address"]),
        ),
        "leases": leases,
        "refusals": added([refusals, *(part["refusals"] for part in parts)]),
        "drops": added(part["drops"] for part in parts),
        "totals": traffic(part["totals"] for part in parts),
        "qoe": added(qoe) if qoe else None,
        "firewall": firewall([part["firewall"] for part in parts]),
        "certificate": first["certificate"],
        "workers": workers,
    }


def held_by(session: SessionStatus, number: int) -> SessionStatus:
    """``session``, saying which worker holds it (whose TUN carries its packets)."""
    return cast(SessionStatus, {**session, "worker": number})


def union_of_leases(views: Iterable[list[LeaseStatus]]) -> list[LeaseStatus]:
    """Every lease any worker knows, once, by address (a worker learns the others' leases
    from the store within a while)."""
    known: dict[tuple[str, str], LeaseStatus] = {}
    for view in views:
        for lease in view:
            known.setdefault((lease["device"], lease["vrf"]), lease)
    return sorted(known.values(), key=lambda lease: _address_key(lease["address"]))


def _address_key(address: str) -> tuple[int, ...]:
    return tuple(int(part) for part in address.split("."))


def added(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return dict(total)


def traffic(parts: Iterable[Traffic]) -> Traffic:
    listed = list(parts)
    return {
        "rx_bytes": sum(p["rx_bytes"] for p in listed),
        "rx_packets": sum(p["rx_packets"] for p in listed),
        "rx_frames": sum(p["rx_frames"] for p in listed),
        "tx_bytes": sum(p["tx_bytes"] for p in listed),
        "tx_packets": sum(p["tx_packets"] for p in listed),
        "tx_frames": sum(p["tx_frames"] for p in listed),
        "drops": added(p["drops"] for p in listed),
    }


def firewall(parts: list[FirewallStatus]) -> FirewallStatus:
    """The shared rules once, with the flows and hits of every worker."""
    hits: Counter[tuple[int, str]] = Counter()
    for part in parts:
        for number, action, count in part["hits"]:
            hits[(number, action)] += count
    first = parts[0]
    return {
        **first,
        "flows": sum(p["flows"] for p in parts),
        "opened": sum(p["opened"] for p in parts),
        "unmatched": sum(p["unmatched"] for p in parts),
        "hits": [(number, action, hits[(number, action)]) for number, action, _ in first["hits"]],
        "sip": added(p["sip"] for p in parts),
        "sip_held": sum(p["sip_held"] for p in parts),
    }


def unbind(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``overlay unbind`` or ``remove`` as every worker did it: the sessions each closed,
    the leases any released, removed if any took it out."""
    merged: dict[str, Any] = {
        "device": results[0]["device"],
        "closed": sum(r["closed"] for r in results),
        "released": sorted(
            {address for r in results for address in r["released"]}, key=_address_key
        ),
    }
    if "removed" in results[0]:
        merged["removed"] = any(r["removed"] for r in results)
    return merged


def flows(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One device's flows (or everyone's) on every worker."""
    return {
        "device": results[0]["device"],
        "flows": [flow for r in results for flow in r["flows"]],
    }


def rules(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``overlay rule …`` as every worker did it: the rules are shared, each rule's hits are
    the sum of every worker's."""
    hits: Counter[int] = Counter()
    for result in results:
        for rule in result["rules"]:
            hits[rule["number"]] += rule["hits"]
    first = results[0]
    return {**first, "rules": [{**rule, "hits": hits[rule["number"]]} for rule in first["rules"]]}
