from connector.sink.backpressure import Backpressure


def test_pauses_at_the_byte_bound_and_resumes_at_half() -> None:
    bp = Backpressure(max_bytes=1000, enough_records=100)
    bp.add(10, 999)
    assert bp.update(held=False) is None
    bp.add(1, 1)
    assert bp.update(held=False) is True and bp.paused
    assert bp.update(held=False) is None  # already paused
    bp.remove(5, 499)
    assert bp.update(held=False) is None  # 501 bytes: not yet below half
    bp.remove(1, 1)
    assert bp.update(held=False) is False and not bp.paused


def test_held_back_destination_pauses_once_every_lane_has_a_batch() -> None:
    bp = Backpressure(max_bytes=10_000, enough_records=100)
    bp.add(99, 99)
    assert bp.update(held=True) is None  # keep reading until each lane has a batch to send
    bp.add(1, 1)
    assert bp.update(held=True) is True
    bp.remove(40, 40)
    assert bp.update(held=True) is None  # still held and still stocked
    assert bp.update(held=False) is False  # the hold is over
