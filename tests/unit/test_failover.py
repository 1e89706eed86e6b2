import itertools

from appliance.failover import ServerOrder, backoff


def test_backoff_grows_to_the_cap_with_full_jitter():
    highest = list(itertools.islice(backoff(1, 60, rand=lambda: 1.0), 9))
    assert highest == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    lowest = list(itertools.islice(backoff(1, 60, rand=lambda: 0.0), 5))
    assert lowest == [1, 1, 1, 1, 1]


def test_server_order_stays_on_the_server_that_worked():
    order = ServerOrder(["a", "b", "c"])
    assert order.round() == ["a", "b", "c"]
    order.connected("b")
    assert order.round() == ["b", "c", "a"]  # no switch-back to a


def test_what_follows_a_close():
    from appliance.failover import After, after_close, after_refusal

    assert after_close(1001) is After.AT_ONCE
    assert after_close(4001) is After.LONGEST
    assert after_close(4003) is After.LONGEST
    assert after_close(1008) is After.LONGEST  # closed for refused traffic: no quick return
    assert after_close(1000) is After.BACKOFF
    assert after_close(None) is After.BACKOFF
    assert after_refusal(401) is After.LONGEST
    assert after_refusal(403) is After.LONGEST
    assert after_refusal(503) is After.BACKOFF
