"""The keepalive's wheel: each item once, at the first whole second at or after its time."""

from overlay.server.wheel import Wheel


def test_items_come_due_at_their_second_in_order_and_once() -> None:
    wheel: Wheel[str] = Wheel(100.0)
    wheel.schedule("b", 102.0)
    wheel.schedule("a", 101.2)  # the next whole second: 102
    wheel.schedule("c", 103.5)
    assert wheel.due(101.9) == []
    assert wheel.due(102.0) == ["b", "a"]
    assert wheel.due(102.5) == []
    assert len(wheel) == 1
    assert wheel.due(104.0) == ["c"]
    assert len(wheel) == 0


def test_an_item_due_in_the_past_comes_at_the_next_call() -> None:
    wheel: Wheel[str] = Wheel(100.0)
    assert wheel.due(105.0) == []
    wheel.schedule("late", 90.0)
    assert wheel.due(105.5) == []  # second 106 has not come
    assert wheel.due(106.0) == ["late"]


def test_a_long_pause_visits_only_the_seconds_that_hold_items() -> None:
    wheel: Wheel[int] = Wheel(0.0)
    for n in range(3):
        wheel.schedule(n, 10.0 * (3 - n))
    wheel.schedule(9, 10_000_000.0)
    assert wheel.due(1_000_000.0) == [2, 1, 0]
    assert len(wheel) == 1
