"""Rules, profiles and the rulebook: parsing, ordering, run-time changes, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overlay.exceptions import ConfigError
from overlay.server.config import FirewallConfig
from overlay.server.firewall import Limits
from overlay.server.rulebook import Rulebook
from overlay.server.rules import (
    RuleError,
    Ruleset,
    load_profiles,
    make_rule,
    parse_ports,
)

PROFILES = load_profiles(None)
TCP, UDP = 6, 17


def covers(profile: str, direction: str, protocol: int, port: int) -> bool:
    return any(m.covers(direction, protocol, port) for m in PROFILES[profile].entries)


def test_ports_parse_lists_and_ranges() -> None:
    assert parse_ports("161") == ((161, 161),)
    assert parse_ports("80, 443,16384-32767") == ((80, 80), (443, 443), (16384, 32767))
    for bad in ("0", "70000", "443-80", "http", "1-2-3", ""):
        with pytest.raises(RuleError, match="ports"):
            parse_ports(bad)


@pytest.mark.parametrize(
    ("direction", "protocol", "port"),
    [
        ("to-device", UDP, 161),
        ("to-device", TCP, 443),
        ("to-device", TCP, 22),
        ("from-device", UDP, 162),
        ("from-device", UDP, 1161),
        ("from-device", UDP, 514),
        ("from-device", TCP, 514),
        ("from-device", UDP, 123),
        ("from-device", TCP, 80),
        ("from-device", TCP, 443),
        ("from-device", TCP, 5000),
        ("from-device", TCP, 5001),
    ],
)
def test_ovoc_management_is_what_the_issue_lists(direction: str, protocol: int, port: int) -> None:
    assert covers("ovoc-management", direction, protocol, port)


def test_ovoc_management_opens_nothing_else() -> None:
    assert not covers("ovoc-management", "to-device", TCP, 80)
    assert not covers("ovoc-management", "to-device", UDP, 162)
    assert not covers("ovoc-management", "from-device", TCP, 22)
    assert len(PROFILES["ovoc-management"].entries) == 9


def test_cisco_uc_is_the_atea_port_table() -> None:
    entries = PROFILES["cisco-uc"].entries
    to_device = {e.describe() for e in entries if e.direction == "to-device"}
    assert to_device == {
        "to-device udp 16384-32767",
        "to-device tcp 5060",
        "to-device udp 5060",
        "to-device tcp 5061",
        "to-device tcp 80",
        "to-device tcp 22",
        "to-device udp 5070",
    }
    outgoing = [e for e in entries if e.direction == "from-device"]
    assert len(outgoing) == 19
    for port in (69, 6969, 5070, 5060, 16384, 32767):
        assert covers("cisco-uc", "from-device", UDP, port)
    for port in (80, 443, 8080, 2000, 2443, 2445, 3804, 5060, 5061, 6970, 8443, 6972, 5222):
        assert covers("cisco-uc", "from-device", TCP, port)
    assert covers("cisco-uc", "from-device", TCP, 2444) and covers(
        "cisco-uc", "from-device", TCP, 2748
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"profile": "nope"}, "no profile named 'nope'"),
        ({"profile": "cisco-uc", "ports": "22"}, "either a profile or"),
        ({"direction": "sideways"}, "direction 'sideways'"),
        ({"direction": "to-device", "protocol": "icmp", "ports": "1"}, "ports need protocol"),
        ({"direction": "from-device", "sources": ["192.0.2.0/24"]}, "sources narrow to-device"),
        ({"direction": "to-device", "sources": ["192.0.2.1/24"]}, "host bits set"),
        ({"direction": "to-device", "action": "maybe"}, "action 'maybe'"),
        ({"protocol": "tcp"}, "needs a profile, or a direction"),
        ({"direction": "to-device", "prot": "tcp"}, "unknown rule key 'prot'"),
    ],
)
def test_a_bad_rule_is_refused_with_the_reason(spec: dict, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        make_rule(10, spec, PROFILES)


def numbers(ruleset: Ruleset) -> list[int]:
    return [r.number for r in ruleset.rules]


def test_insert_move_renumber_and_delete() -> None:
    ruleset = Ruleset.build([{"profile": "ovoc-management"}, {"direction": "to-device"}], PROFILES)
    assert numbers(ruleset) == [10, 20]
    ruleset.insert(make_rule(15, {"direction": "from-device", "protocol": "udp"}, PROFILES))
    assert numbers(ruleset) == [10, 15, 20]
    with pytest.raises(RuleError, match="rule 20 exists already"):
        ruleset.insert(make_rule(20, {"direction": "from-device"}, PROFILES))
    ruleset.rules[2].hits = 5
    ruleset.move(20, 1)
    assert [r.spec.get("direction") for r in ruleset.rules] == ["to-device", None, "from-device"]
    with pytest.raises(RuleError, match="exists already"):
        ruleset.move(1, 10)
    assert numbers(ruleset) == [1, 10, 15]
    ruleset.renumber()
    assert numbers(ruleset) == [10, 20, 30] and ruleset.rules[0].hits == 5
    ruleset.remove(20)
    with pytest.raises(RuleError, match="there is no rule 20"):
        ruleset.remove(20)
    assert ruleset.next_number() == 40


def firewall_config(rules: list[dict] | None = None) -> FirewallConfig:
    return FirewallConfig(
        Limits(), PROFILES, rules or [{"number": 10, "profile": "ovoc-management"}]
    )


def test_the_rulebook_saves_changes_and_a_restart_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "firewall-rules.json"
    book = Rulebook(firewall_config(), path)
    assert not book.changed and not path.exists()
    rule = {"direction": "to-device", "protocol": "tcp", "ports": "8443", "comment": "web"}
    book.change({"op": "add", "number": 5, "rule": rule})
    assert numbers(book.ruleset) == [5, 10]
    again = Rulebook(firewall_config(), path)
    assert again.changed and numbers(again.ruleset) == [5, 10]
    assert again.ruleset.rules[0].spec["comment"] == "web"
    again.change({"op": "reset"})
    assert not path.exists() and numbers(again.ruleset) == [10]


def test_a_refused_change_leaves_file_and_rules_alone(tmp_path: Path) -> None:
    path = tmp_path / "firewall-rules.json"
    book = Rulebook(firewall_config(), path)
    book.change({"op": "add", "rule": {"direction": "from-device", "protocol": "udp"}})
    saved = path.read_text()
    running = book.ruleset
    for command in (
        {"op": "add", "number": 10, "rule": {"direction": "to-device"}},
        {"op": "add", "rule": {"profile": "nope"}},
        {"op": "move", "number": 99, "to": 1},
        {"op": "remove", "number": "ten"},
        {"op": "explode"},
    ):
        with pytest.raises(RuleError):
            book.change(command)
        assert path.read_text() == saved
        assert book.ruleset is running and numbers(running) == [10, 20]


def test_a_damaged_rules_file_stops_the_start_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "firewall-rules.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="overlay rule reset"):
        Rulebook(firewall_config(), path)
    path.write_text(json.dumps({"rules": [{"number": 10, "profile": "gone"}]}))
    with pytest.raises(ConfigError, match="no profile named 'gone'"):
        Rulebook(firewall_config(), path)
