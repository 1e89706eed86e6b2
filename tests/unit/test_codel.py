"""CoDel's drop decisions (RFC 8289), on a simulated clock."""

import itertools
import math

from overlay.codel import Codel


def drops(codel: Codel, sojourn: float, start: float, end: float, step: float) -> list[float]:
    """The times at which CoDel drops the head while packets wait ``sojourn``."""
    times = []
    now = start
    while now < end:
        if codel.drop(sojourn, now):
            times.append(round(now, 6))
        now += step
    return times


def test_a_short_queue_is_never_dropped_from():
    assert drops(Codel(0.005, 0.1), 0.004, 0.0, 10.0, 0.001) == []


def test_a_burst_shorter_than_the_interval_is_not_dropped_from():
    codel = Codel(0.005, 0.1)
    assert drops(codel, 0.050, 0.0, 0.09, 0.001) == []  # above target, for 90 ms only
    assert drops(codel, 0.001, 0.09, 0.2, 0.001) == []  # then it drained
    assert drops(codel, 0.050, 0.2, 0.29, 0.001) == []  # the clock started again


def test_a_standing_queue_is_dropped_from_ever_more_often():
    codel = Codel(0.005, 0.1)
    times = drops(codel, 0.020, 0.0, 1.0, 0.0001)
    assert times[0] == 0.1  # after one interval above target
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(later < earlier for earlier, later in itertools.pairwise(gaps))
    # interval / sqrt(count): 100 ms after the first drop, then 70.7 ms, 57.7 ms, …
    assert math.isclose(gaps[0], 0.1, abs_tol=0.0002)
    assert math.isclose(gaps[1], 0.1 / math.sqrt(2), abs_tol=0.0002)


def test_dropping_stops_once_the_queue_drains():
    codel = Codel(0.005, 0.1)
    assert drops(codel, 0.020, 0.0, 0.5, 0.001)
    assert not codel.drop(0.001, 0.5)
    assert not codel.dropping
    assert drops(codel, 0.001, 0.5, 2.0, 0.001) == []
