"""A capture's tap is bounded in bytes: a reader that stalls costs drops, not memory."""

from __future__ import annotations

from overlay.server.capture import QUEUE_BYTES, Tap


async def test_a_stalled_capture_keeps_at_most_its_bound_and_counts_the_rest() -> None:
    tap = Tap(None)
    segment = bytes(65536)
    for _ in range(1000):  # 64 MiB offered, nobody reading
        tap.offer(b"\xa9\xfe\x01\x01", segment)
    assert tap.size <= QUEUE_BYTES
    assert tap.dropped == 1000 - QUEUE_BYTES // len(segment)
    await tap.get()
    assert tap.size == QUEUE_BYTES - len(segment)  # room again for one more
