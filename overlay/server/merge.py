"""What several workers answer, as the one server an operator sees (``listen.workers``).

Counts add up; what the workers share (the store's leases, the rules, the
certificate) is read once; every worker's sessions and flows are listed. Pure
functions of the workers' answers: :mod:`overlay.server.workers` asks them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
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
    gone: Sequence[ServerStatus] = (),
) -> ServerStatus:
    """One status of the server ``node`` from its running workers' (at least one), by
    worker number; each session says which worker holds it. ``gone``: the last answers of
    workers that do not answer now (dead, restarted, busy), whose counts still count, so
    that no counter the server shows goes back when a worker dies."""
    parts = list(answers.values())
    counted = [*parts, *gone]
    first = parts[0]
    servers = [part["server"] for part in parts]
    tallies = [part["server"] for part in counted]
    leases = union_of_leases(part["leases"] for part in parts)
    server: NodeStatus = {
        **first["server"],
        "node": node,
        "tun": ",".join(s["tun"] for s in servers),
        "started": started,
        "leases": len(leases),
        "pending": sum(s["pending"] for s in servers),
        "handshakes": sum(s["handshakes"] for s in tallies),
        "enrolled": max(s["enrolled"] for s in servers),
        "store": {
            "backend": first["server"]["store"]["backend"],
            "up": all(s["store"]["up"] for s in servers),
            "races": sum(s["store"]["races"] for s in tallies),
            "outages": sum(s["store"]["outages"] for s in tallies),
        },
        "taken_over": sum(s["taken_over"] for s in tallies),
    }
    if first["server"]["routes"] is not None:
        server["routes"] = {
            "installed": sum(s["routes"]["installed"] for s in servers if s["routes"]),
            "errors": added(s["routes"]["errors"] for s in tallies if s["routes"]),
        }
    qoe = [part["qoe"] for part in counted if part["qoe"] is not None]
    return {
        "server": server,
        "sessions": sorted(
            (held_by(s, number) for number, part in answers.items() for s in part["sessions"]),
            key=lambda s: _address_key(s["address"]),
        ),
        "leases": leases,
        "refusals": added([refusals, *(part["refusals"] for part in counted)]),
        "drops": added(part["drops"] for part in counted),
        "totals": traffic(part["totals"] for part in counted),
        "qoe": added(qoe) if qoe else None,
        "firewall": firewall(
            [part["firewall"] for part in parts], [part["firewall"] for part in gone]
        ),
        "certificate": first["certificate"],
        "workers": workers,
    }


class Tally:
    """What the workers counted, the dead included, so that no counter the server shows
    goes back when a worker dies (Prometheus would read that as a reset of the sum).

    It keeps each worker's last answer, counts only, with the pid that gave it: while a
    worker does not answer (busy, dead, starting again) that answer stands in for it, and
    once a new process answers in its place, it joins the counts of the dead. What a
    worker counted after its last answer dies with it."""

    def __init__(self) -> None:
        self.answered: dict[int, tuple[int, ServerStatus]] = {}
        self.dead: ServerStatus | None = None  # all the dead processes' counts, as one

    def remember(self, number: int, pid: int, answer: ServerStatus) -> None:
        previous = self.answered.get(number)
        if previous is not None and previous[0] != pid:
            counts = previous[1]
            if self.dead is not None:
                counts = status({0: self.dead}, "", 0, {}, [], [counts])
            self.dead = counts_of(counts)
        self.answered[number] = (pid, counts_of(answer))

    def gone(self, answering: Collection[int]) -> list[ServerStatus]:
        """The counts that count beside those of the workers ``answering`` now."""
        gone = [counts for n, (_, counts) in self.answered.items() if n not in answering]
        return gone if self.dead is None else [*gone, self.dead]


def counts_of(answer: ServerStatus) -> ServerStatus:
    """``answer`` without its sessions and leases: what counts of it, kept small."""
    return {**answer, "sessions": [], "leases": []}


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


def firewall(parts: list[FirewallStatus], gone: Sequence[FirewallStatus] = ()) -> FirewallStatus:
    """The shared rules once, with the flows of every worker and the hits of every worker,
    gone ones included."""
    hits: Counter[tuple[int, str]] = Counter()
    counted = [*parts, *gone]
    for part in counted:
        for number, action, count in part["hits"]:
            hits[(number, action)] += count
    first = parts[0]
    return {
        **first,
        "flows": sum(p["flows"] for p in parts),
        "opened": sum(p["opened"] for p in counted),
        "unmatched": sum(p["unmatched"] for p in counted),
        "hits": [(number, action, hits[(number, action)]) for number, action, _ in first["hits"]],
        "sip": added(p["sip"] for p in counted),
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
