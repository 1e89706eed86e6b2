import pytest

from overlay.counters import Counters, Drop
from overlay.keepalive import Beat, Keepalive
from overlay.outbox import Outbox
from overlay.server.lifecycle import InvalidTransition, Lifecycle, State


def test_keepalive_declares_dead_after_three_missed_intervals():
    keepalive = Keepalive(interval=60)
    keepalive.heard(1000)
    assert keepalive.tick(1060) is Beat.PING
    assert keepalive.tick(1179) is Beat.PING
    assert keepalive.tick(1180) is Beat.DEAD
    keepalive.heard(1180)
    assert keepalive.tick(1240) is Beat.PING
    assert keepalive.timeout == 180


def test_transitions():
    tunnel = Lifecycle()
    assert tunnel.advance(State.OPEN)
    assert tunnel.advance(State.CLOSING)
    assert not tunnel.advance(State.CLOSING)
    assert tunnel.advance(State.CLOSED)
    with pytest.raises(InvalidTransition):
        tunnel.advance(State.OPEN)


def test_outbox_is_bounded_by_bytes():
    outbox = Outbox(limit=300)
    assert outbox.put(b"a" * 100, 0.0) and outbox.put(b"b" * 200, 0.0)
    assert not outbox.put(b"c", 0.0)
    assert outbox.size == 300
    assert outbox.take(150) == [b"a" * 100]
    assert outbox.take(150) == [b"b" * 200]  # at least one, even when larger
    assert outbox.size == 0 and not outbox


def test_outbox_knows_when_its_oldest_packet_arrived():
    outbox = Outbox(limit=1000)
    outbox.put(b"a" * 10, 1.0)
    outbox.put(b"b" * 20, 2.0)
    assert outbox.oldest == 1.0
    outbox.drop_oldest()
    assert (outbox.oldest, outbox.size, len(outbox)) == (2.0, 20, 1)


def test_counters_by_reason():
    counters = Counters()
    counters.drop(Drop.SPOOFED)
    counters.drop(Drop.SPOOFED, 2)
    assert counters.as_dict()["drops"] == {"spoofed": 3}
