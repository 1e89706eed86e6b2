import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay import wire
from overlay.exceptions import FrameError, HelloError
from overlay.outbox import Outbox
from tests.packets import ipv4, ipv6

HELLO = wire.Hello(
    address="169.254.1.1",
    prefix=16,
    server="169.254.0.1",
    mtu=1400,
    ping_interval=60,
    max_message=262144,
    session="abc",
)


def test_hello_round_trip_matches_the_documented_message():
    text = HELLO.serialize()
    assert json.loads(text) == {
        "type": "hello",
        "version": 1,
        "address": "169.254.1.1",
        "prefix": 16,
        "server": "169.254.0.1",
        "mtu": 1400,
        "ping_interval": 60,
        "max_message": 262144,
        "session": "abc",
        "offload": False,
    }
    assert wire.Hello.parse(text) == HELLO


def test_hello_offload_is_optional_and_must_be_a_boolean():
    plain = json.loads(HELLO.serialize())
    del plain["offload"]  # as an older server sends it
    assert wire.Hello.parse(json.dumps(plain)).offload is False
    assert wire.Hello.parse(json.dumps({**plain, "offload": True})).offload is True
    with pytest.raises(HelloError, match="'offload' is not true or false"):
        wire.Hello.parse(json.dumps({**plain, "offload": "yes"}))


def test_hello_routes_are_sent_only_when_there_are_some_and_checked_on_arrival():
    with_routes = dataclasses.replace(HELLO, routes=("198.18.2.0/24",))
    assert json.loads(with_routes.serialize())["routes"] == ["198.18.2.0/24"]
    assert wire.Hello.parse(with_routes.serialize()) == with_routes
    plain = json.loads(HELLO.serialize())
    assert "routes" not in plain  # a server without [lan] says what it always said
    assert wire.Hello.parse(json.dumps(plain)).routes == ()
    for bad, message in ((["198.18.2.1/24"], "bad route"), ("198.18.2.0/24", "not a list")):
        with pytest.raises(HelloError, match=message):
            wire.Hello.parse(json.dumps({**plain, "routes": bad}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version 2"),
        ({"type": "bye"}, "not a hello"),
        ({"address": "not-an-ip"}, "bad address"),
        ({"mtu": 100}, "mtu 100"),
        ({"prefix": 33}, "prefix"),
        ({"mtu": "1400"}, "'mtu'"),
        ({"ping_interval": True}, "'ping_interval'"),
    ],
)
def test_bad_hellos_name_what_is_wrong(change, message):
    data = json.loads(HELLO.serialize()) | change
    with pytest.raises(HelloError, match=message):
        wire.Hello.parse(json.dumps(data))


def test_hello_that_is_not_json():
    with pytest.raises(HelloError, match="not JSON"):
        wire.Hello.parse("{")


def test_split_whole_packets():
    packets = [ipv4("169.254.1.1", "169.254.0.1", payload=b"a" * n) for n in (0, 1, 1372)]
    packets.append(ipv6("fd00::1", "fd00::2"))
    split = wire.split_packets(b"".join(packets))
    assert [bytes(p) for p in split] == packets


def test_split_packets_behind_offload_headers():
    packets = [ipv4("169.254.1.1", "169.254.0.1", payload=b"a" * n) for n in (0, 1372)]
    records = [bytes([n]) * 10 + packet for n, packet in enumerate(packets)]
    assert [bytes(r) for r in wire.split_packets(b"".join(records), 10)] == records
    with pytest.raises(FrameError, match="byte 10: empty packet"):
        wire.split_packets(bytes(10), 10)


def test_batches_from_the_outbox_split_back_into_the_packets():
    packets = [ipv4("169.254.1.1", "169.254.0.1", payload=bytes([n]) * n) for n in range(100)]
    outbox = Outbox(limit=1 << 20)
    for packet in packets:
        assert outbox.put(packet, 0.0)
    frames = []
    while outbox:
        frames.append(b"".join(outbox.take(1000)))  # as a session's sender builds its frames
    assert all(len(f) <= 1000 for f in frames)
    assert [bytes(p) for f in frames for p in wire.split_packets(f)] == packets


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "empty frame"),
        (ipv4("169.254.1.1", "169.254.0.1", payload=b"abc")[:-1], "remain"),  # truncated
        (ipv4("169.254.1.1", "169.254.0.1") + b"\x45\x00", "truncated"),  # trailing garbage
        (b"\x70" + b"\x00" * 40, "version 7"),  # wrong version
        (b"\x00" * 20, "version 0"),  # zero-length IPv4 packet reads as version 0
        (ipv4("169.254.1.1", "169.254.0.1")[:2] + b"\xff\xff" + b"\x00" * 24, "remain"),  # lies
    ],
)
def test_frames_that_do_not_split_are_refused(frame, message):
    with pytest.raises(FrameError, match=message):
        wire.split_packets(frame)


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_concatenation_splits_or_raises_frame_error(chunks):
    frame = b"".join(chunks)
    try:
        packets = wire.split_packets(frame)
    except FrameError:
        return
    assert b"".join(bytes(p) for p in packets) == frame


def test_offered_version():
    assert wire.offered_version(["ovl.v1"]) == 1
    assert wire.offered_version(["chat", "ovl.v2", "ovl.v1"]) == 2
    assert wire.offered_version(["chat", "ovl.vx"]) is None
