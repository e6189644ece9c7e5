from connector.sink.backpressure import Backpressure


def test_pauses_at_the_byte_bound_and_resumes_at_half() -> None:
    bp = Backpressure(max_bytes=1000, enough_records=100)
    assert bp.update(10, 999, held=False) is None
    assert bp.update(11, 1000, held=False) is True and bp.paused
    assert bp.update(11, 1000, held=False) is None  # already paused
    assert bp.update(6, 501, held=False) is None  # not yet below half
    assert bp.update(5, 500, held=False) is False and not bp.paused


def test_held_back_destination_pauses_once_every_lane_has_a_batch() -> None:
    bp = Backpressure(max_bytes=10_000, enough_records=100)
    assert bp.update(99, 99, held=True) is None  # keep reading until each lane has a batch to send
    assert bp.update(100, 100, held=True) is True
    assert bp.update(60, 60, held=True) is None  # still held and still stocked
    assert bp.update(60, 60, held=False) is False  # the hold is over


def test_records_of_followed_imports_have_a_bound_of_their_own() -> None:
    """They leave only when their import ends: counted in the buffer's bound, imports taking a second
    capped throughput at a bound's worth of records a second; unbounded, slow status polls would let them
    grow without end."""
    bp = Backpressure(max_bytes=1000, enough_records=100)
    assert bp.update(5, 900, held=False, following=900) is None  # 1800 held: each under its bound
    assert bp.update(5, 100, held=False, following=1000) is True  # the imports' bound stops intake
    assert bp.update(5, 100, held=False, following=600) is None
    assert bp.update(5, 100, held=False, following=500) is False
