from connector.sink.backpressure import Backpressure, memory_of


def test_pauses_at_the_memory_bound_and_resumes_at_half() -> None:
    # 10 records of 100 bytes: 2 x 1000 bytes (received, decoded) + 10 x 1200 per record = 14,000.
    assert memory_of(10, 1000) == 14_000
    bp = Backpressure(max_bytes=14_000, enough_records=100)
    assert bp.update(10, 999, held=False) is None
    assert bp.update(10, 1000, held=False) is True and bp.paused
    assert bp.update(10, 1000, held=False) is None  # already paused
    assert bp.update(5, 501, held=False) is None  # not yet below half
    assert bp.update(5, 500, held=False) is False and not bp.paused


def test_held_back_destination_pauses_once_every_lane_has_a_batch() -> None:
    bp = Backpressure(max_bytes=1_000_000, enough_records=100)
    assert bp.update(99, 99, held=True) is None  # keep reading until each lane has a batch to send
    assert bp.update(100, 100, held=True) is True
    assert bp.update(60, 60, held=True) is None  # still held and still stocked
    assert bp.update(60, 60, held=False) is False  # the hold is over
