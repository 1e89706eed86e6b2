"""SIP registrations: the parser, the state of one flow, and the firewall that holds flows."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.counters import Drop
from overlay.server import sip
from overlay.server.firewall import Firewall, FlowTable, Limits
from overlay.server.rules import RuleError, Ruleset, load_profiles
from tests.packets import ipv4

DEVICE = "169.254.1.7"
REGISTRAR = "198.18.0.50"  # on the server side
PROXY = "198.18.0.60"  # another proxy that calls the device
PROFILES = load_profiles(None)
TCP, UDP = 6, 17
SIP_RULE = {"direction": "from-device", "protocol": "udp", "ports": "5060", "sip": "registrar"}


def register(
    expires: int | None = 3600,
    cseq: int = 1,
    contact: str = f"<sip:phone@{DEVICE}:5062>",
    call_id: str = "a84b4c76e66710",
    body: bytes = b"",
) -> bytes:
    lines = [
        f"REGISTER sip:{REGISTRAR} SIP/2.0",
        f"Via: SIP/2.0/UDP {DEVICE}:5062;branch=z9hG4bK776asdhds",
        "To: Phone <sip:phone@example.test>",
        "From: Phone <sip:phone@example.test>;tag=1928301774",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: {contact}",
    ]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def ok(
    contact: str | None = f"<sip:phone@{DEVICE}:5062>;expires=600",
    cseq: int = 1,
    call_id: str = "a84b4c76e66710",
    method: str = "REGISTER",
) -> bytes:
    lines = [
        "SIP/2.0 200 OK",
        f"Via: SIP/2.0/UDP {DEVICE}:5062;branch=z9hG4bK776asdhds",
        "To: Phone <sip:phone@example.test>;tag=37GkEhwl6",
        f"i: {call_id}",  # the compact form of Call-ID
        f"CSeq: {cseq} {method}",
    ]
    if contact is not None:
        lines.append(f"m: {contact}")
    lines.append("l: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def invite(source_port: int = 5060) -> bytes:
    return ipv4(REGISTRAR, DEVICE, UDP, b"INVITE sip:phone@x SIP/2.0\r\n\r\n", 5060, source_port)


# The parser


def test_a_register_and_its_answer_parse() -> None:
    request = sip.parse(register())
    assert request.method == "REGISTER" and request.status == 0
    assert request.cseq == ("a84b4c76e66710", 1, "REGISTER")
    assert request.contacts() == [sip.Contact(DEVICE, 5062, None)]
    assert request.expires == 3600
    assert request.address_of_record() == "sip:phone@example.test"
    response = sip.parse(ok())
    assert response.status == 200 and response.method == ""
    assert response.cseq == ("a84b4c76e66710", 1, "REGISTER")
    assert sip.granted(request, response) == 600


def test_contacts_in_every_form() -> None:
    message = sip.parse(
        register(
            contact='"A, B" <sip:a@169.254.1.7:5070;transport=tcp>;expires=60, '
            "sip:b@169.254.1.7;expires=30, <sips:c@[2001:db8::1]:5081>"
        )
    )
    assert message.contacts() == [
        sip.Contact("169.254.1.7", 5070, 60),
        sip.Contact("169.254.1.7", 5060, 30),
        sip.Contact("2001:db8::1", 5081, None),
    ]
    assert sip.parse(register(contact="*", expires=0)).contacts() is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"REGISTER sip:x SIP/2.0\r\nCall-ID: 1\r\n",  # no end of headers
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"SIP/2.0 2000 OK\r\n\r\n",
        b"register sip:x SIP/2.0\r\n\r\n",
        b"REGISTER sip:x SIP/2.0\r\nno colon here\r\n\r\n",
        b"REGISTER sip:x SIP/2.0\r\nContent-Length: lots\r\n\r\n",
        b"REGISTER sip:x SIP/2.0\r\nTo: \xff\xfe\r\n\r\n",
        b"REGISTER sip:x SIP/2.0\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
    ],
)
def test_what_is_not_sip_raises_a_sip_error(data: bytes) -> None:
    with pytest.raises(sip.SipError):
        sip.parse(data)


@pytest.mark.parametrize(
    "contact", ["<http://x>", "<sip:@>", "<sip:a@h:99999>", "<sip:a@h>;expires=-1", "<sip:a@h"]
)
def test_bad_contacts_raise_a_sip_error(contact: str) -> None:
    with pytest.raises(sip.SipError):
        sip.parse(register(contact=contact)).contacts()


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_a_sip_error(data: bytes) -> None:
    try:
        message = sip.parse(data)
        message.contacts()
        message.expires  # noqa: B018 - read for its errors
    except sip.SipError:
        pass


@given(
    st.lists(
        st.sampled_from(["Call-ID", "i", "CSeq", "Contact", "m", "To", "t", "Expires", "Via", "l"]),
        max_size=8,
    ),
    st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=40), min_size=8, max_size=8),
)
def test_any_headers_parse_or_raise_a_sip_error(names: list[str], values: list[str]) -> None:
    lines = [f"{n}: {v}" for n, v in zip(names, values, strict=False)]
    data = ("REGISTER sip:r SIP/2.0\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
    try:
        message = sip.parse(data)
        message.contacts()
        message.cseq  # noqa: B018
        message.expires  # noqa: B018
    except sip.SipError:
        pass


@given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=20))
def test_a_tcp_stream_cut_anywhere_gives_the_same_messages(cuts: list[int]) -> None:
    """Messages with bodies, keep-alive CRLFs between them, split at arbitrary points."""
    data = register(body=b"v=0\r\n" * 7) + b"\r\n\r\n" + ok() + register(cseq=2)
    stream, seq, found = sip.Stream(), 1000, []
    position = 0
    for cut in [*cuts, len(data)]:
        piece = data[position : position + cut]
        messages, lost = stream.feed(seq, piece)
        assert not lost
        found += messages
        seq, position = seq + len(piece), position + len(piece)
        if position >= len(data):
            break
    assert [(m.method, m.status, m.cseq[1]) for m in found] == [
        ("REGISTER", 0, 1),
        ("", 200, 1),
        ("REGISTER", 0, 2),
    ]


def test_a_tcp_stream_skips_retransmissions_and_resets_after_a_gap() -> None:
    stream, data = sip.Stream(), register()
    assert len(stream.feed(0, data[:100])[0]) == 0
    assert stream.feed(0, data[:100]) == ([], False)  # sent again: ignored
    assert len(stream.feed(100, data[100:])[0]) == 1
    assert stream.feed(len(data) + 500, data) == ([], True)  # bytes were lost
    assert len(stream.feed(2 * len(data) + 500, data)[0]) == 1  # the next message reads


def test_a_huge_content_length_is_skipped_not_buffered() -> None:
    stream = sip.Stream()
    head = b"MESSAGE sip:x SIP/2.0\r\nContent-Length: 999999999\r\n\r\n"
    assert len(stream.feed(0, head)[0]) == 1
    stream.feed(len(head), b"x" * 5000)
    assert not stream.buffer and stream.skip == 999999999 - 5000


# The registrations of one flow


def test_a_registration_lasts_what_the_registrar_granted() -> None:
    state = sip.Registrations("registrar", DEVICE, 86400)
    assert state.from_device(sip.parse(register())) == "register"
    assert state.until(0) == 0
    assert state.to_device(sip.parse(ok()), 100) == "registered"
    assert state.until(100) == 100 + 600 + sip.GRACE
    assert state.contact_ports(100) == {5062}
    assert state.from_device(sip.parse(register(expires=0, cseq=2))) == "register"
    assert state.to_device(sip.parse(ok(contact=None, cseq=2)), 200) == "unregistered"
    assert state.until(200) == 0


def test_answers_that_match_no_register_change_nothing() -> None:
    state = sip.Registrations("registrar", DEVICE, 86400)
    state.from_device(sip.parse(register()))
    assert state.to_device(sip.parse(ok(cseq=9)), 0) is None
    assert state.to_device(sip.parse(ok(method="INVITE")), 0) is None
    assert state.to_device(sip.parse(b"SIP/2.0 100 Trying\r\nCSeq: 1 REGISTER\r\n\r\n"), 0) is None
    assert state.until(0) == 0
    assert state.to_device(sip.parse(ok()), 0) == "registered"  # still pending


def test_a_huge_expires_is_held_only_as_long_as_allowed() -> None:
    state = sip.Registrations("registrar", DEVICE, 7200)
    state.from_device(sip.parse(register(expires=4294967295)))
    state.to_device(sip.parse(ok(contact=f"<sip:phone@{DEVICE}:5062>;expires=4294967295")), 0)
    assert state.until(0) == 7200 + sip.GRACE


def test_a_contact_on_another_address_is_counted_and_opens_no_port() -> None:
    state = sip.Registrations("registrar", DEVICE, 86400)
    event = state.from_device(sip.parse(register(contact="<sip:phone@10.0.0.5:5062>")))
    assert event == "foreign-contact"
    assert state.to_device(sip.parse(ok(contact="<sip:phone@10.0.0.5:5062>")), 0) == "registered"
    assert state.contact_ports(0) == set()
    assert state.until(0) > 0


def test_the_flow_is_held_until_every_address_of_record_expired() -> None:
    state = sip.Registrations("registrar", DEVICE, 86400)
    state.from_device(sip.parse(register(cseq=1)))
    state.to_device(sip.parse(ok(cseq=1)), 0)
    second = register(cseq=2).replace(b"To: Phone <sip:phone@", b"To: Fax <sip:fax@")
    state.from_device(sip.parse(second))
    state.to_device(sip.parse(ok(cseq=2, contact=f"<sip:fax@{DEVICE}:5062>;expires=60")), 0)
    assert state.until(0) == 600 + sip.GRACE
    assert len(state.bindings) == 2


# The firewall


def sip_firewall(*specs: dict[str, Any], udp: float = 120) -> tuple[Firewall, FlowTable]:
    return Firewall(Ruleset.build(list(specs), PROFILES), Limits(udp=udp)), FlowTable()


def registered_over_udp(fw: Firewall, table: FlowTable, expires: int = 600) -> None:
    contact = f"<sip:phone@{DEVICE}:5062>;expires={expires}"
    assert fw.check(table, ipv4(DEVICE, REGISTRAR, UDP, register(), 5062, 5060), False, 0) is None
    assert fw.check(table, ipv4(REGISTRAR, DEVICE, UDP, ok(contact), 5060, 5062), True, 1) is None


def test_a_registration_keeps_a_quiet_udp_flow_open_for_the_registrars_call() -> None:
    fw, table = sip_firewall(SIP_RULE, udp=120)
    registered_over_udp(fw, table)
    assert fw.check(table, invite(5062), True, 500) is None  # long after 120 s of quiet
    assert fw.sip == {"register": 1, "registered": 1}
    assert table.describe(500, 0)[0]["sip_held"]
    assert fw.check(table, invite(5062), True, 500 + 600 + sip.GRACE + 121) is Drop.POLICY


def test_without_the_sip_option_the_call_is_refused_once_the_flow_aged_out() -> None:
    rule = {k: v for k, v in SIP_RULE.items() if k != "sip"}
    fw, table = sip_firewall(rule, udp=120)
    registered_over_udp(fw, table)
    assert fw.check(table, invite(5062), True, 500) is Drop.POLICY
    assert not fw.sip


def test_expires_zero_ends_the_hold() -> None:
    fw, table = sip_firewall(SIP_RULE, udp=120)
    registered_over_udp(fw, table)
    unregister = ipv4(DEVICE, REGISTRAR, UDP, register(expires=0, cseq=2), 5062, 5060)
    assert fw.check(table, unregister, False, 10) is None
    answer = ipv4(REGISTRAR, DEVICE, UDP, ok(contact=None, cseq=2), 5060, 5062)
    assert fw.check(table, answer, True, 11) is None
    assert fw.sip["unregistered"] == 1
    assert fw.check(table, invite(5062), True, 11 + 121) is Drop.POLICY


def test_calls_from_the_registrar_to_the_contact_port_pass_and_others_need_any_proxy() -> None:
    fw, table = sip_firewall(SIP_RULE, udp=120)
    assert fw.check(table, ipv4(DEVICE, REGISTRAR, UDP, register(), 5070, 5060), False, 0) is None
    reply = ipv4(REGISTRAR, DEVICE, UDP, ok(), 5060, 5070)
    assert fw.check(table, reply, True, 1) is None
    assert fw.check(table, invite(5062), True, 300) is None  # the contact port, not the source
    assert fw.sip["from-registrar"] == 1
    other = ipv4(PROXY, DEVICE, UDP, b"INVITE sip:p SIP/2.0\r\n\r\n", 5060, 5062)
    assert fw.check(table, other, True, 300) is Drop.POLICY
    fw, table = sip_firewall({**SIP_RULE, "sip": "any-proxy"}, udp=120)
    fw.check(table, ipv4(DEVICE, REGISTRAR, UDP, register(), 5070, 5060), False, 0)
    fw.check(table, reply, True, 1)
    assert fw.check(table, other, True, 300) is None
    assert fw.sip["from-other-proxy"] == 1
    assert fw.check(table, ipv4(PROXY, DEVICE, UDP, b"", 5060, 9999), True, 300) is Drop.POLICY


def test_messages_that_do_not_parse_leave_a_plain_flow_and_are_counted() -> None:
    fw, table = sip_firewall(SIP_RULE, udp=120)
    garbage = ipv4(DEVICE, REGISTRAR, UDP, b"\x16\x03\x01 not sip at all", 5062, 5060)
    assert fw.check(table, garbage, False, 0) is None
    keepalive = ipv4(DEVICE, REGISTRAR, UDP, b"\r\n\r\n", 5062, 5060)
    assert fw.check(table, keepalive, False, 1) is None
    assert fw.sip == {"unparsable": 1}
    assert fw.check(table, invite(5062), True, 1 + 121) is Drop.POLICY


def test_a_register_cut_by_fragmentation_is_read_when_its_headers_arrived() -> None:
    fw, table = sip_firewall(SIP_RULE, udp=120)
    whole = register(body=b"x" * 2000)
    first = ipv4(DEVICE, REGISTRAR, UDP, whole[:1400], 5062, 5060, ident=7, fragment=0x2000)
    assert fw.check(table, first, False, 0) is None
    assert fw.sip == {"register": 1}
    cut = ipv4(DEVICE, REGISTRAR, UDP, whole[:100], 5062, 5060, ident=8, fragment=0x2000)
    assert fw.check(table, cut, False, 0) is None
    assert fw.sip["unparsable"] == 1


def test_a_registration_over_tcp_split_across_segments() -> None:
    rule = {**SIP_RULE, "protocol": "tcp"}
    fw, table = sip_firewall(rule)
    fw.limits = Limits(tcp=120)
    data = register()
    for seq, piece in ((1, data[:50]), (51, data[50:])):
        packet = ipv4(DEVICE, REGISTRAR, TCP, piece, 40000, 5060, tcp_flags=0x18, seq=seq)
        assert fw.check(table, packet, False, 0) is None
    answer = ipv4(REGISTRAR, DEVICE, TCP, ok(), 5060, 40000, tcp_flags=0x18, seq=9)
    assert fw.check(table, answer, True, 1) is None
    assert fw.sip == {"register": 1, "registered": 1}
    later = ipv4(REGISTRAR, DEVICE, TCP, b"INVITE", 5060, 40000, tcp_flags=0x18, seq=500)
    assert fw.check(table, later, True, 500) is None  # past the 120 s idle time


def test_the_cisco_uc_profile_reads_sip_and_sip_needs_a_device_flow() -> None:
    ruleset = Ruleset.build([{"profile": "cisco-uc"}], PROFILES)
    (rule,) = ruleset.rules
    assert rule.sip and rule.sip_mode("from-device", UDP, 5060) == "registrar"
    assert rule.sip_mode("from-device", TCP, 443) is None
    changed = Ruleset.build([{"profile": "cisco-uc", "sip": "any-proxy"}], PROFILES)
    assert changed.rules[0].sip_mode("from-device", TCP, 5060) == "any-proxy"
    with pytest.raises(RuleError, match="from-device and protocol udp or tcp"):
        Ruleset.build([{**SIP_RULE, "direction": "to-device"}], PROFILES)
    with pytest.raises(RuleError, match="must be one of registrar, any-proxy"):
        Ruleset.build([{**SIP_RULE, "sip": "yes"}], PROFILES)
    with pytest.raises(RuleError, match="has no SIP entries"):
        Ruleset.build([{"profile": "ovoc-management", "sip": "registrar"}], PROFILES)
