from overlay.server.snmp import ROOT, answer, dotted, parse_oid, table

STATUS = {
    "server": {"leases": 2, "pending": 0, "handshakes": 5},
    "totals": {"rx_bytes": 1000, "tx_bytes": 2000},
    "drops": {"spoofed": 3, "policy": 4},
    "refusals": {"bad-credentials": 1},
    "sessions": [
        {
            "address": "169.254.1.2",
            "device": "dev2",
            "vrf": "default",
            "peer": "198.18.0.12",
            "rx_bytes": 10,
            "tx_bytes": 20,
            "drops": {},
        },
        {
            "address": "169.254.1.1",
            "device": "dev1",
            "vrf": "main-vrf",
            "peer": "198.18.0.11",
            "rx_bytes": 30,
            "tx_bytes": 40,
            "drops": {"policy": 2},
        },
    ],
}
STATUS["firewall"] = {
    "flows": 1,
    "opened": 9,
    "unmatched": 4,
    "hits": [(10, "allow", 7), (20, "deny", 2)],
    "sip": {"registered": 3, "unparsable": 1},
    "sip_held": 1,
}
FLOWS = [
    {
        "vrf": "default",
        "address": "169.254.1.2",
        "protocol": "udp",
        "opened_by": "device",
        "remote": "198.18.0.50",
        "remote_port": 5060,
        "device_port": 5062,
        "rule": 10,
        "packets": 12,
        "state": "answered",
        "since": 1000.0,
        "idle": 400.0,
        "expires_in": 3000.0,
        "sip_held": True,
    }
]
BASE = dotted(ROOT)
NOW = 1500.0


def test_get_scalars():
    objects = table(STATUS, FLOWS, NOW)
    assert answer("get", parse_oid(f"{BASE}.1.1.0"), objects) == [f"{BASE}.1.1.0", "gauge", "2"]
    assert answer("get", parse_oid(f"{BASE}.1.7.0"), objects)[2] == "7"
    assert answer("get", parse_oid(f"{BASE}.1.99.0"), objects) == ["NONE"]


def test_walk_visits_everything_in_order_and_ends():
    objects = table(STATUS, FLOWS, NOW)
    oid, seen = parse_oid(BASE), []
    while True:
        reply = answer("getnext", oid, objects)
        if reply == ["NONE"]:
            break
        seen.append(reply)
        oid = parse_oid(reply[0])
    assert len(seen) == 8 + 2 * 7 + 8 + 2 * 3 + 11
    assert [r[0] for r in seen] == sorted((r[0] for r in seen), key=parse_oid)
    devices = [r[2] for r in seen if r[0].startswith(f"{BASE}.2.1.1.2.")]
    assert devices == ["dev1", "dev2"]  # rows ordered by overlay address
    assert f"{BASE}.2.1.1.2.169.254.1.1" in [r[0] for r in seen]


def test_getnext_before_the_subtree_starts_at_its_first_object():
    assert answer("getnext", (1, 3, 6), table(STATUS, FLOWS, NOW))[0] == f"{BASE}.1.1.0"


def test_the_firewall_its_rules_and_a_sip_held_flow() -> None:
    objects = table(STATUS, FLOWS, NOW)

    def get(suffix: str) -> list[str]:
        return answer("get", parse_oid(f"{BASE}.{suffix}"), objects)[1:]

    assert get("3.1.0") == ["gauge", "1"]  # ovlFlows
    assert get("3.3.0") == ["counter64", "4"]  # ovlFlowDropsPolicy
    assert get("3.7.0") == ["counter64", "3"]  # ovlSipRegistrations
    assert get("4.1.3.20") == ["counter64", "2"]  # ovlRuleHits of rule 20
    row = "169.254.1.2.17.198.18.0.50.5060.5062"  # device, protocol, remote, ports
    assert get(f"5.1.3.{row}") == ["ipaddress", "198.18.0.50"]
    assert get(f"5.1.7.{row}") == ["gauge", "500"]  # ovlFlowAge
    assert get(f"5.1.8.{row}") == ["gauge", "400"]  # ovlFlowIdle
    assert get(f"5.1.9.{row}") == ["integer", "1"]  # ovlFlowSipHeld: true
