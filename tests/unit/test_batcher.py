from connector.sink.batcher import Batcher


def test_closes_on_record_count() -> None:
    b: Batcher[int] = Batcher(max_records=3, max_bytes=1000, max_wait=10)
    assert b.add(1, 10, 0.0) == ()
    assert b.add(2, 10, 0.0) == ()
    (closed,) = b.add(3, 10, 0.0)
    assert closed.items == [1, 2, 3] and closed.nbytes == 30
    assert b.open_batch is None


def test_closes_before_exceeding_bytes() -> None:
    b: Batcher[str] = Batcher(max_records=100, max_bytes=25, max_wait=10)
    b.add("a", 10, 0.0)
    b.add("b", 10, 0.0)
    (closed,) = b.add("c", 10, 0.0)
    assert closed.items == ["a", "b"] and closed.nbytes == 20
    open_batch = b.open_batch
    assert open_batch is not None and open_batch.items == ["c"]


def test_byte_close_and_count_close_in_one_add() -> None:
    b: Batcher[str] = Batcher(max_records=1, max_bytes=5, max_wait=10)
    (first,) = b.add("a", 5, 0.0)
    assert first.items == ["a"]
    b2: Batcher[str] = Batcher(max_records=2, max_bytes=10, max_wait=10)
    b2.add("a", 6, 0.0)
    closed = b2.add("b", 6, 0.0)
    assert [c.items for c in closed] == [["a"]]


def test_time_bound_counts_from_first_record() -> None:
    b: Batcher[int] = Batcher(max_records=100, max_bytes=1000, max_wait=1.0)
    b.add(1, 1, 10.0)
    b.add(2, 1, 10.9)
    assert b.deadline() == 11.0
    assert b.take_due(10.99) is None
    due = b.take_due(11.0)
    assert due is not None and due.items == [1, 2]
    assert b.deadline() is None


def test_retain_keeps_items_and_derives_their_bytes() -> None:
    b: Batcher[int] = Batcher(max_records=100, max_bytes=1000, max_wait=1.0)
    for i in range(6):
        b.add(i, 10 + i, 0.0)
    b.retain(lambda i: i % 2 == 1, lambda i: 10 + i)
    batch = b.open_batch
    assert batch is not None and batch.items == [1, 3, 5] and batch.nbytes == 11 + 13 + 15
    b.retain(lambda i: False, lambda i: 10 + i)
    assert b.open_batch is None


def test_closed_batch_retain_recomputes_bytes() -> None:
    b: Batcher[int] = Batcher(max_records=4, max_bytes=1000, max_wait=1.0)
    (closed,) = [c for i in range(4) for c in b.add(i, 100, 0.0)]
    closed.retain(lambda i: i < 2, lambda i: 100)
    assert closed.items == [0, 1] and closed.nbytes == 200


def test_flush_returns_open_batch_once() -> None:
    b: Batcher[int] = Batcher(max_records=100, max_bytes=1000, max_wait=1.0)
    b.add(7, 1, 0.0)
    flushed = b.flush()
    assert flushed is not None and flushed.items == [7]
    assert b.flush() is None
