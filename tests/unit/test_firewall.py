"""The stateful firewall: flows, replies, ICMP, fragments, limits and timeouts, without sockets."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.counters import Drop
from overlay.server.firewall import Firewall, FlowTable, Limits
from overlay.server.rules import Ruleset, load_profiles
from tests.packets import ipv4

DEVICE = "169.254.1.7"
SERVER = "169.254.0.1"
MANAGER = "192.0.2.10"  # a management host routed to the server
PROFILES = load_profiles(None)
TCP, UDP, ICMP = 6, 17, 1


def firewall(*specs: dict[str, Any], **limits: Any) -> Firewall:
    rules = list(specs) or [{"profile": "ovoc-management"}]
    return Firewall(Ruleset.build(rules, PROFILES), Limits(**limits))


def to_device(src: str = MANAGER, **fields: Any) -> bytes:
    return ipv4(src, DEVICE, **fields)


def from_device(dst: str = SERVER, **fields: Any) -> bytes:
    return ipv4(DEVICE, dst, **fields)


def test_management_polls_snmp_and_the_answer_passes() -> None:
    fw, table = firewall(), FlowTable()
    assert fw.check(table, to_device(sport=40000, dport=161), True, 0) is None
    assert fw.check(table, from_device(MANAGER, sport=161, dport=40000), False, 1) is None
    assert fw.opened == 1


def test_ports_outside_the_profile_are_refused_both_ways() -> None:
    fw, table = firewall(), FlowTable()
    assert fw.check(table, to_device(proto=TCP, dport=8080), True, 0) is Drop.POLICY
    assert fw.check(table, from_device(proto=UDP, dport=9999), False, 0) is Drop.POLICY
    assert fw.ruleset.unmatched == 2
    assert not table.flows


def test_an_unsolicited_answer_from_the_device_is_refused() -> None:
    """A device cannot open a flow towards a management host's ephemeral port."""
    fw, table = firewall(), FlowTable()
    assert fw.check(table, from_device(MANAGER, sport=161, dport=40000), False, 0) is Drop.POLICY


def test_device_syslog_over_tcp_and_the_server_replies() -> None:
    fw, table = firewall(), FlowTable()
    syn = from_device(proto=TCP, sport=50000, dport=514)
    syn_ack = to_device(SERVER, proto=TCP, sport=514, dport=50000, tcp_flags=0x12)
    assert fw.check(table, syn, False, 0) is None
    assert fw.check(table, syn_ack, True, 0.1) is None
    (flow,) = table.flows.values()
    assert flow.replied and not flow.to_device and flow.rule == 10


def test_tcp_timeouts_follow_the_state() -> None:
    fw, table = firewall(tcp_opening=30, tcp=3600, tcp_closing=10), FlowTable()
    fw.check(table, from_device(proto=TCP, sport=50000, dport=514), False, 0)
    (flow,) = table.flows.values()
    assert flow.expires == 30
    fw.check(table, to_device(SERVER, proto=TCP, sport=514, dport=50000, tcp_flags=0x12), True, 1)
    assert flow.expires == 3601
    fw.check(table, from_device(proto=TCP, sport=50000, dport=514, tcp_flags=0x11), False, 2)
    assert flow.expires == 12 and flow.closing


def test_an_idle_udp_flow_ends_and_its_replies_with_it() -> None:
    fw, table = firewall(udp=120), FlowTable()
    fw.check(table, to_device(sport=40000, dport=161), True, 0)
    reply = from_device(MANAGER, sport=161, dport=40000)
    assert fw.check(table, reply, False, 119) is None
    assert fw.check(table, reply, False, 119 + 120) is Drop.POLICY
    assert table.sweep(1000) == 1 and not table.flows


def test_ping_passes_both_ways_without_a_rule() -> None:
    fw, table = firewall({"direction": "to-device", "protocol": "udp", "ports": "161"}), FlowTable()
    assert fw.check(table, to_device(proto=ICMP, icmp_type=8, icmp_id=7), True, 0) is None
    assert (
        fw.check(table, from_device(MANAGER, proto=ICMP, icmp_type=0, icmp_id=7), False, 0) is None
    )
    assert fw.check(table, from_device(proto=ICMP, icmp_type=8, icmp_id=9), False, 0) is None
    assert fw.check(table, to_device(SERVER, proto=ICMP, icmp_type=0, icmp_id=9), True, 0) is None
    assert fw.ruleset.rules[0].hits == 0


def test_an_echo_reply_nobody_asked_for_is_refused() -> None:
    fw, table = firewall(), FlowTable()
    stray = from_device(MANAGER, proto=ICMP, icmp_type=0, icmp_id=7)
    assert fw.check(table, stray, False, 0) is Drop.POLICY


def test_icmp_errors_pass_only_for_a_live_flow() -> None:
    fw, table = firewall(), FlowTable()
    probe = to_device(sport=40000, dport=161)
    fw.check(table, probe, True, 0)
    unreachable = from_device(MANAGER, proto=ICMP, icmp_type=3, icmp_id=0, payload=probe[:28])
    assert fw.check(table, unreachable, False, 0) is None
    other = to_device(sport=40001, dport=161)
    stray = from_device(MANAGER, proto=ICMP, icmp_type=3, icmp_id=0, payload=other[:28])
    assert fw.check(table, stray, False, 0) is Drop.POLICY
    # The other way: the server side tells the device its syslog went nowhere.
    syslog = from_device(proto=UDP, sport=45000, dport=514)
    fw.check(table, syslog, False, 0)
    back = to_device(SERVER, proto=ICMP, icmp_type=3, icmp_id=0, payload=syslog[:28])
    assert fw.check(table, back, True, 0) is None


def test_later_fragments_follow_the_first() -> None:
    fw, table = firewall(), FlowTable()
    fw.check(table, to_device(sport=40000, dport=161), True, 0)
    first = from_device(MANAGER, sport=161, dport=40000, ident=77, fragment=0x2000)
    later = from_device(MANAGER, proto=UDP, ident=77, fragment=185)
    assert fw.check(table, first, False, 0) is None
    assert fw.check(table, later[:20] + b"x" * 40, False, 0) is None
    unknown = from_device(MANAGER, proto=UDP, ident=78, fragment=185)
    assert fw.check(table, unknown[:20] + b"x" * 40, False, 0) is Drop.POLICY


def test_flows_past_the_limit_are_dropped_until_one_ends() -> None:
    fw, table = firewall(max_flows=2, udp=60), FlowTable()
    assert fw.check(table, to_device(sport=1, dport=161), True, 0) is None
    assert fw.check(table, to_device(sport=2, dport=161), True, 10) is None
    assert fw.check(table, to_device(sport=3, dport=161), True, 20) is Drop.FLOW_LIMIT
    assert fw.check(table, to_device(sport=1, dport=161), True, 30) is None  # a live flow
    assert fw.check(table, to_device(sport=3, dport=161), True, 71) is None  # sport 2 ended
    assert len(table.flows) == 2


def test_sources_narrow_a_rule_to_management_ranges() -> None:
    rule = {"direction": "to-device", "protocol": "tcp", "ports": "22", "sources": ["192.0.2.0/28"]}
    fw, table = firewall(rule), FlowTable()
    assert fw.check(table, to_device("192.0.2.10", proto=TCP, dport=22), True, 0) is None
    assert fw.check(table, to_device("192.0.2.99", proto=TCP, dport=22), True, 0) is Drop.POLICY


def test_a_deny_rule_before_an_allow_wins() -> None:
    fw = firewall(
        {
            "number": 5,
            "action": "deny",
            "direction": "to-device",
            "protocol": "udp",
            "ports": "161",
        },
        {"number": 10, "profile": "ovoc-management"},
    )
    table = FlowTable()
    assert fw.check(table, to_device(dport=161), True, 0) is Drop.POLICY
    assert fw.check(table, to_device(proto=TCP, dport=22), True, 0) is None
    assert [r.hits for r in fw.ruleset.rules] == [1, 1]


@pytest.mark.parametrize("proto", [TCP, UDP, ICMP])
def test_a_truncated_transport_header_is_malformed(proto: int) -> None:
    packet = bytearray(to_device(proto=proto)[:22])
    packet[2:4] = (22).to_bytes(2, "big")
    assert firewall().check(FlowTable(), bytes(packet), True, 0) is Drop.MALFORMED


def test_cisco_uc_carries_sip_and_media_but_not_snmp() -> None:
    fw, table = firewall({"profile": "cisco-uc"}), FlowTable()
    assert fw.check(table, to_device(proto=UDP, dport=5060), True, 0) is None
    assert fw.check(table, to_device(proto=UDP, dport=20000), True, 0) is None
    assert fw.check(table, from_device(proto=UDP, sport=20000, dport=32767), False, 0) is None
    assert fw.check(table, from_device(proto=UDP, dport=69), False, 0) is None
    assert fw.check(table, to_device(proto=UDP, dport=161), True, 0) is Drop.POLICY


# Property-based: the engine against a model written straight from the rules.

ports = st.integers(1, 65535)
protocols = st.sampled_from([TCP, UDP])
hosts = st.sampled_from(["192.0.2.1", "192.0.2.200", SERVER, "169.254.0.9"])
rule_specs = st.lists(
    st.fixed_dictionaries(
        {
            "action": st.sampled_from(["allow", "deny"]),
            "direction": st.sampled_from(["to-device", "from-device"]),
            "protocol": st.sampled_from(["tcp", "udp", "any"]),
        },
        optional={"ports": st.sampled_from(["161", "22,443", "5000-6000", "1-1024"])},
    ).filter(lambda r: "ports" not in r or r["protocol"] != "any"),
    max_size=5,
)


def model_allows(specs: list[dict[str, Any]], inbound: bool, proto: int, port: int) -> bool:
    """First match wins, default deny: what the documentation promises."""
    direction = "to-device" if inbound else "from-device"
    for spec in specs:
        if spec["direction"] != direction:
            continue
        if spec["protocol"] != "any" and {"tcp": TCP, "udp": UDP}[spec["protocol"]] != proto:
            continue
        if "ports" in spec:
            low_high = [p.split("-") for p in spec["ports"].split(",")]
            if not any(int(r[0]) <= port <= int(r[-1]) for r in low_high):
                continue
        return spec["action"] == "allow"
    return False


@settings(max_examples=300)
@given(rule_specs, st.booleans(), protocols, hosts, ports, ports)
def test_a_new_flow_passes_exactly_when_the_first_matching_rule_allows_it(
    specs, inbound, proto, remote, remote_port, device_port
):
    fw, table = firewall(*specs) if specs else firewall({"direction": "to-device"}), FlowTable()
    specs = specs or [{"direction": "to-device", "protocol": "any", "action": "allow"}]
    if inbound:
        packet = to_device(remote, proto=proto, sport=remote_port, dport=device_port)
        allowed = model_allows(specs, True, proto, device_port)
    else:
        packet = from_device(remote, proto=proto, sport=device_port, dport=remote_port)
        allowed = model_allows(specs, False, proto, remote_port)
    verdict = fw.check(table, packet, inbound, 0)
    assert (verdict is None) == allowed
    assert len(table.flows) == (1 if allowed else 0)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), protocols, hosts, ports, ports), max_size=40))
def test_replies_of_allowed_flows_always_pass_and_the_table_stays_bounded(packets):
    fw, table = (
        firewall({"direction": "to-device"}, {"direction": "from-device"}, max_flows=8),
        FlowTable(),
    )
    for now, (inbound, proto, remote, remote_port, device_port) in enumerate(packets):
        if inbound:
            first = to_device(remote, proto=proto, sport=remote_port, dport=device_port)
            reply = from_device(remote, proto=proto, sport=device_port, dport=remote_port)
        else:
            first = from_device(remote, proto=proto, sport=device_port, dport=remote_port)
            reply = to_device(remote, proto=proto, sport=remote_port, dport=device_port)
        if fw.check(table, first, inbound, now) is None:
            assert fw.check(table, reply, not inbound, now) is None
        assert len(table.flows) <= 8


@given(st.binary(min_size=20, max_size=80), st.booleans())
def test_any_ipv4_packet_gets_a_verdict_and_never_an_exception(data, inbound):
    packet = bytearray(data)
    packet[0] = 0x40 | max(5, packet[0] & 0x0F)
    verdict = firewall().check(FlowTable(), bytes(packet), inbound, 0)
    assert verdict is None or isinstance(verdict, Drop)


def test_the_remote_address_is_the_far_end() -> None:
    fw, table = firewall(), FlowTable()
    fw.check(table, to_device(sport=40000, dport=161), True, 0)
    (flow,) = table.describe(0, 1000.0)
    assert flow["remote"] == MANAGER and flow["opened_by"] == "management"
    assert (flow["remote_port"], flow["device_port"], flow["protocol"]) == (40000, 161, "udp")
    assert ipaddress.IPv4Address(flow["remote"]) not in ipaddress.IPv4Network("169.254.0.0/16")


def test_the_last_flow_shortcut_still_tells_protocols_and_directions_apart() -> None:
    fw, table = firewall(), FlowTable()
    poll = to_device(sport=40000, dport=161)
    assert fw.check(table, poll, True, 0) is None
    assert fw.check(table, poll, True, 1) is None  # the shortcut
    assert fw.check(table, to_device(proto=TCP, sport=40000, dport=161), True, 1) is Drop.POLICY
    assert fw.check(table, from_device(MANAGER, sport=40000, dport=161), False, 1) is Drop.POLICY
    (flow,) = table.flows.values()
    assert flow.packets == 2 and not flow.replied
    assert fw.check(table, poll, True, 1000) is None  # ended, then opened anew
    assert fw.opened == 2


def test_a_full_table_refuses_new_flows_without_walking_itself() -> None:
    """A flood of new flows against a full table: one sweep a second at most, not one per
    packet (each walked the whole table: 42 µs a packet at 1,024 flows)."""
    fw, table = firewall(max_flows=64, udp=60), FlowTable()
    for n in range(64):
        assert fw.check(table, to_device(sport=n, dport=161), True, 0) is None
    for n in range(1000):
        assert fw.check(table, to_device(sport=1000 + n, dport=161), True, 1) is Drop.FLOW_LIMIT
    assert table.sweeps == 1  # the first refusal looked once; nothing can end before 60
    for n in range(1000):
        fw.check(table, to_device(sport=3000 + n, dport=161), True, 59.5)
    assert table.sweeps == 1
    assert fw.check(table, to_device(sport=5000, dport=161), True, 61) is None  # all ended
    assert table.sweeps == 2


def test_a_full_fragment_table_is_not_walked_per_fragment() -> None:
    fw, table = firewall(max_flows=4), FlowTable()
    fw.check(table, to_device(sport=40000, dport=161), True, 0)
    for ident in range(100):
        first = from_device(MANAGER, sport=161, dport=40000, ident=ident, fragment=0x2000)
        assert fw.check(table, first, False, 1) is None
    assert len(table.fragments) == 4
    assert table.sweeps == 1


def test_all_addresses_together_hold_at_most_max_total_flows() -> None:
    fw = firewall(max_flows=10, max_total_flows=15, udp=60)
    tables = [FlowTable(), FlowTable()]
    for n in range(10):
        assert fw.check(tables[0], to_device(sport=n, dport=161), True, 0) is None
    verdicts = [fw.check(tables[1], to_device(sport=n, dport=161), True, 0) for n in range(10)]
    assert verdicts == [None] * 5 + [Drop.FLOW_LIMIT] * 5
    assert fw.flows == 15
    fw.sweep(tables[0], 100)  # all ended
    assert fw.flows == 5
    assert fw.check(tables[1], to_device(sport=99, dport=161), True, 100) is None


def test_a_device_quotes_only_what_it_received_and_sends_no_redirects() -> None:
    fw, table = firewall(), FlowTable()
    ntp = from_device(proto=UDP, sport=123, dport=123)
    assert fw.check(table, ntp, False, 0) is None
    answer = to_device(SERVER, proto=UDP, sport=123, dport=123)
    own = from_device(SERVER, proto=ICMP, icmp_type=3, icmp_id=0, payload=answer[:28])
    assert fw.check(table, own, False, 1) is None  # about a packet it received: passes
    # "fragmentation needed" about the server talking to another device, same ports
    elsewhere = ipv4(SERVER, "169.254.1.99", UDP, b"", 123, 123)
    forged = from_device(SERVER, proto=ICMP, icmp_type=3, icmp_id=0, payload=elsewhere[:28])
    assert fw.check(table, forged, False, 1) is Drop.POLICY
    for kind in (4, 5):  # source quench, redirect: never from a device
        quoted = from_device(SERVER, proto=ICMP, icmp_type=kind, icmp_id=0, payload=answer[:28])
        assert fw.check(table, quoted, False, 1) is Drop.POLICY
