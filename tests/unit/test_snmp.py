from overlay.server.snmp import ROOT, answer, dotted, parse_oid, table

STATUS = {
    "server": {"leases": 2, "pending": 0, "handshakes": 5},
    "totals": {"rx_bytes": 1000, "tx_bytes": 2000},
    "drops": {"spoofed": 3},
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
BASE = dotted(ROOT)


def test_get_scalars():
    objects = table(STATUS)
    assert answer("get", parse_oid(f"{BASE}.1.1.0"), objects) == [f"{BASE}.1.1.0", "gauge", "2"]
    assert answer("get", parse_oid(f"{BASE}.1.7.0"), objects)[2] == "3"
    assert answer("get", parse_oid(f"{BASE}.1.99.0"), objects) == ["NONE"]


def test_walk_visits_everything_in_order_and_ends():
    objects = table(STATUS)
    oid, seen = parse_oid(BASE), []
    while True:
        reply = answer("getnext", oid, objects)
        if reply == ["NONE"]:
            break
        seen.append(reply)
        oid = parse_oid(reply[0])
    assert len(seen) == 8 + 2 * 7
    assert [r[0] for r in seen] == sorted((r[0] for r in seen), key=parse_oid)
    devices = [r[2] for r in seen if r[0].startswith(f"{BASE}.2.1.1.2.")]
    assert devices == ["dev1", "dev2"]  # rows ordered by overlay address
    assert f"{BASE}.2.1.1.2.169.254.1.1" in [r[0] for r in seen]


def test_getnext_before_the_subtree_starts_at_its_first_object():
    assert answer("getnext", (1, 3, 6), table(STATUS))[0] == f"{BASE}.1.1.0"
