"""Two workers' answers read as one server's, the way `overlay status` and /metrics show it."""

from __future__ import annotations

from typing import Any

from overlay.server import merge, metrics
from overlay.status import WorkerStatus


def traffic(n: int, drops: dict[str, int]) -> dict[str, Any]:
    return {
        "rx_bytes": 100 * n,
        "rx_packets": n,
        "rx_frames": n,
        "tx_bytes": 200 * n,
        "tx_packets": 2 * n,
        "tx_frames": 2 * n,
        "drops": drops,
    }


def worker(number: int, devices: list[tuple[str, str]], known: list[tuple[str, str]]) -> Any:
    """A worker's status holding sessions of ``devices`` and knowing the leases ``known``."""
    return {
        "server": {
            "node": f"srv-w{number}",
            "version": "1.0",
            "overlay": "169.254.0.1",
            "tun": f"ovl0w{number}",
            "listen": "0.0.0.0:443/tun",
            "started": 1000.0 + number,
            "leases": len(known),
            "pool": "169.254.1.0-169.254.255.254",
            "pool_size": 65022,
            "pending": number,
            "handshakes": 10 * number,
            "enrolled": 3 + number,
            "store": {"backend": "postgresql", "up": number == 1, "races": 1, "outages": 0},
            "taken_over": number,
            "routes": {"installed": len(devices), "errors": {"del": 1}},
            "bird": None,
            "lan": None,
        },
        "sessions": [
            {"device": d, "vrf": "default", "address": a, **traffic(1, {"policy": 1})}
            for d, a in devices
        ],
        "leases": [
            {"device": d, "vrf": "default", "address": a, "lan_address": None} for d, a in known
        ],
        "refusals": {"bad-password": number},
        "drops": {"policy": number},
        "totals": traffic(number, {"policy": number}),
        "qoe": {"stored": number},
        "firewall": {
            "rules": 2,
            "rules_from": "config",
            "flows": number,
            "opened": number,
            "unmatched": 0,
            "hits": [(1, "allow", number), (2, "deny", 0)],
            "max_flows": 1000,
            "sip": {},
            "sip_held": 0,
        },
        "certificate": None,
    }


def test_two_workers_read_as_one_server() -> None:
    one = worker(1, [("b", "169.254.1.10")], [("a", "169.254.1.9"), ("b", "169.254.1.10")])
    two = worker(2, [("a", "169.254.1.9"), ("c", "169.254.1.100")], [("c", "169.254.1.100")])
    workers: list[WorkerStatus] = [
        {"number": n, "node": f"srv-w{n}", "tun": f"ovl0w{n}", "pid": 100 + n, "up": True,
         "sessions": 1, "restarts": 2 - n}
        for n in (1, 2)
    ]  # fmt: skip
    status = merge.status({1: one, 2: two}, "srv", 5.0, {"admin-token": 4}, workers)
    server = status["server"]
    assert (server["node"], server["tun"], server["started"]) == ("srv", "ovl0w1,ovl0w2", 5.0)
    assert (server["pending"], server["handshakes"], server["taken_over"]) == (3, 30, 3)
    assert server["enrolled"] == 5  # the store's count, as the worker that read it last saw it
    assert server["store"] == {"backend": "postgresql", "up": False, "races": 2, "outages": 0}
    assert server["routes"] == {"installed": 3, "errors": {"del": 2}}
    # every lease once, in address order (not as strings: .9 before .10 before .100)
    assert [lease["device"] for lease in status["leases"]] == ["a", "b", "c"]
    assert server["leases"] == 3
    assert [(s["device"], s["worker"]) for s in status["sessions"]] == [
        ("a", 2),
        ("b", 1),
        ("c", 2),
    ]
    assert status["refusals"] == {"bad-password": 3, "admin-token": 4}
    assert status["totals"]["rx_packets"] == 3 and status["totals"]["drops"] == {"policy": 3}
    assert status["qoe"] == {"stored": 3}
    assert status["firewall"]["hits"] == [(1, "allow", 3), (2, "deny", 0)]
    assert status["firewall"]["flows"] == 3 and status["firewall"]["rules"] == 2
    # and /metrics reads it as it reads one server's, with the supervisor's own counts
    assert "overlay_relay_dropped_total" not in metrics.exposition(status).decode()
    status["server"]["relay_dropped"] = 7
    text = metrics.exposition(status).decode()
    assert "overlay_sessions 3.0" in text
    assert 'overlay_build_info{node="srv",version="1.0"} 1.0' in text
    assert 'overlay_worker_restarts_total{worker="1"} 1.0' in text
    assert "overlay_relay_dropped_total 7.0" in text


def test_an_unbind_done_by_every_worker_reads_as_one() -> None:
    answers = [
        {"device": "a", "closed": 1, "released": ["169.254.1.10", "169.254.1.9"], "removed": True},
        {"device": "a", "closed": 0, "released": [], "removed": False},
    ]
    assert merge.unbind(answers) == {
        "device": "a",
        "closed": 1,
        "released": ["169.254.1.9", "169.254.1.10"],
        "removed": True,
    }
    unbound = [{"device": "a", "closed": 2, "released": []}]  # unbind, not remove
    assert merge.unbind(unbound) == {"device": "a", "closed": 2, "released": []}


def test_a_rule_listing_adds_every_workers_hits() -> None:
    """The device whose packets a rule let through is on one worker; ``overlay rule list``
    asked the first (it showed 0 hits for the rule just used)."""
    source = "/var/lib/overlay/firewall-rules.json"
    answers = [
        {"rules": [{"number": 10, "action": "allow", "hits": 0}, {"number": 15, "hits": 0}],
         "source": source},
        {"rules": [{"number": 10, "action": "allow", "hits": 4}, {"number": 15, "hits": 2}],
         "source": source},
    ]  # fmt: skip
    assert merge.rules(answers) == {
        "rules": [{"number": 10, "action": "allow", "hits": 4}, {"number": 15, "hits": 2}],
        "source": source,
    }


def test_no_count_goes_back_when_a_worker_dies_or_does_not_answer() -> None:
    tally = merge.Tally()

    def merged(answers: dict[int, Any]) -> Any:
        return merge.status(answers, "srv", 5.0, {}, [], tally.gone(answers))

    def counts(status: Any) -> tuple[Any, ...]:
        fw = status["firewall"]
        return (
            status["server"]["handshakes"],
            status["refusals"]["bad-password"],
            status["totals"]["rx_packets"],
            status["drops"]["policy"],
            status["qoe"]["stored"],
            fw["opened"],
            fw["hits"][0][2],
            status["server"]["routes"]["errors"]["del"],
        )

    one, two = worker(1, [("a", "169.254.1.9")], []), worker(2, [("b", "169.254.1.10")], [])
    tally.remember(1, 101, one)
    tally.remember(2, 102, two)
    assert counts(merged({1: one, 2: two})) == (30, 3, 3, 3, 3, 3, 3, 2)
    # worker 2 busy (or dead): its last counts stand in for it, its sessions do not
    status = merged({1: one})
    assert counts(status) == (30, 3, 3, 3, 3, 3, 3, 2)
    assert [s["device"] for s in status["sessions"]] == ["a"]
    assert status["firewall"]["flows"] == 1 and status["server"]["pending"] == 1
    # a new worker 2 answers from zero, twice in a row: the dead one's counts stay
    fresh = worker(2, [], [])
    for _ in range(2):
        tally.remember(2, 202, fresh)
        assert counts(merged({1: one, 2: fresh})) == (50, 5, 5, 5, 5, 5, 5, 3)
    # and a second death adds to the first
    tally.remember(2, 302, fresh)
    assert counts(merged({1: one, 2: fresh})) == (70, 7, 7, 7, 7, 7, 7, 4)
