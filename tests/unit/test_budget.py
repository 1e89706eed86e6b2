from overlay.server.budget import TokenBucket


def test_a_bucket_takes_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=100, burst=1000, now=0)
    assert bucket.spend(1000, 0)
    assert not bucket.spend(1, 0)  # dry
    assert bucket.spend(100, 1.0)  # a second refilled 100
    assert not bucket.spend(101, 2.0)
    assert bucket.spend(1000, 100.0)  # refills to the burst, not beyond
    assert not bucket.spend(1, 100.0)
