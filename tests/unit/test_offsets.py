import random

from connector.sink.offsets import OffsetTracker

TP = ("t", 0)


def test_commit_point_waits_for_contiguous_settlement() -> None:
    t = OffsetTracker()
    epoch = t.assign(TP)
    for o in range(10, 15):
        t.track(TP, o)
    t.settle(TP, epoch, 11)
    t.settle(TP, epoch, 12)
    assert t.to_commit() == {}  # 10 is not settled, nothing may be committed
    t.settle(TP, epoch, 10)
    assert t.to_commit() == {TP: 13}
    assert t.to_commit() == {}  # unchanged since the last call
    t.settle(TP, epoch, 14)
    assert t.to_commit() == {}
    t.settle(TP, epoch, 13)
    assert t.to_commit() == {TP: 15}


def test_offsets_with_gaps_commit_past_the_last_seen() -> None:
    t = OffsetTracker()
    e = t.assign(TP)
    for o in (3, 7, 8):  # compaction or transaction markers leave gaps
        t.track(TP, o)
        t.settle(TP, e, o)
    assert t.to_commit() == {TP: 9}


def test_stale_epoch_settles_nothing() -> None:
    t = OffsetTracker()
    old = t.assign(TP)
    t.track(TP, 0)
    assert t.revoke(TP) is None
    new = t.assign(TP)
    t.track(TP, 0)
    assert not t.settle(TP, old, 0)
    assert t.to_commit() == {}
    assert t.settle(TP, new, 0)
    assert t.to_commit() == {TP: 1}


def test_revoke_hands_back_uncommitted_point() -> None:
    t = OffsetTracker()
    e = t.assign(TP)
    for o in range(3):
        t.track(TP, o)
    t.settle(TP, e, 0)
    t.settle(TP, e, 1)
    assert t.revoke(TP) == 2
    assert t.epoch(TP) == 0
    assert not t.settle(TP, e, 2)


def test_random_settlement_order_never_passes_an_unsettled_record() -> None:
    rng = random.Random(7)
    t = OffsetTracker()
    e = t.assign(TP)
    offsets = list(range(1000))
    for o in offsets:
        t.track(TP, o)
    order = offsets[:]
    rng.shuffle(order)
    settled: set[int] = set()
    for o in order:
        t.settle(TP, e, o)
        settled.add(o)
        point = t.to_commit().get(TP)
        if point is not None:
            assert all(x in settled for x in range(point))
            assert point == len(settled) or point not in settled
    assert t.unsettled() == 0


def test_a_failed_commit_is_handed_out_again() -> None:
    t = OffsetTracker()
    e = t.assign(TP)
    t.track(TP, 0)
    t.settle(TP, e, 0)
    assert t.to_commit() == {TP: 1}
    assert t.to_commit() == {}
    t.commit_failed(TP, 1)
    assert t.to_commit() == {TP: 1}
    t.commit_failed(TP, 0)  # an older point failing does not matter once a newer one is out
    assert t.to_commit() == {}
