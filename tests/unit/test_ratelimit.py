from overlay.server.ratelimit import FailureLimiter


def test_locks_out_after_max_failures_within_the_window():
    limiter = FailureLimiter(max_failures=3, window=60, lockout=30)
    assert limiter.retry_after("198.18.0.9", 0) == 0
    assert not limiter.failed("198.18.0.9", 0)
    assert not limiter.failed("198.18.0.9", 10)
    assert limiter.failed("198.18.0.9", 20)
    assert limiter.retry_after("198.18.0.9", 25) == 25
    assert limiter.retry_after("198.18.0.10", 25) == 0  # other sources are not affected
    assert limiter.retry_after("198.18.0.9", 50) == 0  # lockout over


def test_failures_age_out_of_the_window():
    limiter = FailureLimiter(max_failures=3, window=60, lockout=30)
    limiter.failed("a", 0)
    limiter.failed("a", 30)
    assert not limiter.failed("a", 61)  # the first one is older than the window
    assert limiter.failed("a", 62)


def test_forget_old_keeps_the_tables_small():
    limiter = FailureLimiter(max_failures=2, window=10, lockout=10)
    for n in range(1000):
        limiter.failed(f"198.18.{n // 256}.{n % 256}", 0)
    limiter.failed("x", 0)
    limiter.failed("x", 1)
    limiter.forget_old(100)
    assert limiter._failures == {} and limiter._locked_until == {}


def test_checks_under_way_count_like_failures():
    """200 concurrent guesses were all checked before the first failed: now only
    max_failures may be under way from one source."""
    limiter = FailureLimiter(max_failures=3, window=60, lockout=30)
    for _ in range(3):
        assert limiter.retry_after("a", 0) == 0
        limiter.checking("a")
    assert limiter.retry_after("a", 0) > 0  # the fourth waits
    assert limiter.retry_after("b", 0) == 0
    limiter.checked("a")
    assert limiter.retry_after("a", 0) == 0  # one ended well
    limiter.checked("a")
    limiter.failed("a", 1)
    limiter.checked("a")
    limiter.failed("a", 1)
    assert limiter.retry_after("a", 2) == 0  # two failures, nothing under way


def test_the_tables_are_bounded():
    limiter = FailureLimiter(max_failures=5, window=60, lockout=30, max_sources=1000)
    for n in range(200_000):
        limiter.failed(f"s{n}", 0)
    assert len(limiter._failures) == 1000
    assert "s199999" in limiter._failures and "s0" not in limiter._failures
