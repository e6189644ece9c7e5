"""The worker (Kafka side) and the task (decode, batch, deliver, settle) with injected fakes.

The fake consumer hands out real confluent_kafka Message objects, calls the rebalance and commit callbacks
from inside consume() as librdkafka does, and records commits and pauses; the API is httpx.MockTransport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from connector.codec.base import SchemaPending
from connector.codec.json import JsonDecoder
from connector.codec.schema import validator_for
from connector.config import DeliverySettings, RetrySettings
from connector.delivery.http import HttpxClient
from connector.delivery.service import DeliveryService
from connector.destinations.rally_uxr import RallyUxrActivities
from connector.metrics import Metrics
from connector.outcomes import Failure
from connector.records import Record
from connector.sink.backpressure import RECORD_COST, Backpressure
from connector.sink.offsets import OffsetTracker
from connector.sink.task import SinkTask
from connector.sink.worker import RESHARE_RETRY, SinkWorker
from tests.unit.helpers import activity

TOPIC = "t"


def message(
    offset: int, partition: int = 0, payload: dict[str, Any] | None = None, raw: bytes = b""
) -> Message:
    value = raw or orjson.dumps(payload or activity(f"p{offset}"))
    return Message(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        key=f"k{offset}".encode(),
        value=value,
        timestamp=(1, 1_700_000_000_000),
    )


class FakeConsumer:
    def __init__(self, partitions: list[int]) -> None:
        self.partitions = partitions
        self.queue: list[Message] = []
        self.commits: list[tuple[dict[tuple[str, int], int], bool]] = []
        self.paused: set[tuple[str, int]] = set()
        self.callbacks: dict[str, Callable[..., None]] = {}
        self.on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] | None = None
        self._pending_commit: list[TopicPartition] | None = None
        self._assigned = False
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        self.callbacks = callbacks

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        if not self._assigned:
            self._assigned = True
            self.callbacks["on_assign"](self, [TopicPartition(TOPIC, p) for p in self.partitions])
        if self._pending_commit is not None and self.on_commit is not None:
            done, self._pending_commit = self._pending_commit, None
            self.on_commit(None, done)
        out = [m for m in self.queue if (m.topic(), m.partition()) not in self.paused][:num_messages]
        for m in out:
            self.queue.remove(m)
        return out

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(({(tp.topic, tp.partition): tp.offset for tp in offsets}, asynchronous))
        if asynchronous:
            self._pending_commit = offsets  # answered from the next consume(), as librdkafka does

    def revoke(self, partitions: list[int]) -> None:
        self.callbacks["on_revoke"](self, [TopicPartition(TOPIC, p) for p in partitions])

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def close(self) -> None:
        self.closed = True


class FakeDeadLetters:
    """Acknowledges every write on the next poll(), as the broker would."""

    def __init__(self, task: SinkTask) -> None:
        self.topic = "t.dlq"
        self.task = task
        self.written: list[tuple[int, str]] = []
        self._unacked: list[tuple[Record, Failure]] = []

    @property
    def pending(self) -> int:
        return len(self._unacked)

    def held(self) -> tuple[int, int]:
        return len(self._unacked), sum(r.size for r, _ in self._unacked)

    def write(self, record: Record, failure: Failure) -> None:
        self._unacked.append((record, failure))

    def poll(self) -> None:
        unacked, self._unacked = self._unacked, []
        for record, failure in unacked:
            self.written.append((record.offset, failure.reason))
            self.task.dead_lettered(record, failure, True)

    def flush(self, timeout: float) -> int:
        self.poll()
        return 0


def accepted(request: httpx.Request) -> httpx.Response:
    if request.method == "GET":
        return httpx.Response(200, json={"importId": "i1", "status": "COMPLETED", "failedRecords": None})
    return httpx.Response(202, json={"message": "ok", "importId": "i1"})


def build(
    handler: Callable[[httpx.Request], httpx.Response] = accepted,
    *,
    lanes: int = 2,
    max_records: int = 10,
    max_wait: float = 0.05,
    partitions: tuple[int, ...] = (0,),
) -> tuple[SinkWorker, FakeConsumer, FakeDeadLetters, Metrics, httpx.AsyncClient]:
    metrics = Metrics()
    m = metrics.sink("s")
    settings = DeliverySettings(
        concurrency=lanes, retry=RetrySettings(max_attempts=3, initial_backoff=0.001, max_backoff=0.01)
    )
    client = httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(handler))
    destination = RallyUxrActivities({})
    service = DeliveryService(destination, HttpxClient(client), settings, m)
    task = SinkTask(
        "s",
        JsonDecoder(),
        validator_for(destination.schema_file),
        destination,
        service,
        OffsetTracker(),
        m,
        lanes=lanes,
        max_records=max_records,
        max_bytes=1 << 20,
        max_wait=max_wait,
    )
    dead_letters = FakeDeadLetters(task)
    task.attach(dead_letters)
    consumer = FakeConsumer(list(partitions))
    worker = SinkWorker(
        "s",
        [TOPIC],
        cast(Consumer, consumer),
        task,
        dead_letters,
        Backpressure(1 << 20, max_records * lanes),
        m,
        shutdown_timeout=2.0,
        on_close=client.aclose,
    )
    consumer.on_commit = worker.on_commit
    return worker, consumer, dead_letters, metrics, client


async def run_until(worker: SinkWorker, done: Callable[[], bool], limit: float = 5.0) -> float:
    """Run the worker until `done()`, then stop it; returns the seconds `done()` took to come true."""
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not done():
        assert loop.time() - started < limit, "condition not reached"
        assert not runner.done(), runner.exception()
        await asyncio.sleep(0.005)
    took = loop.time() - started
    stop.set()
    await runner
    return took


def last_commit(consumer: FakeConsumer) -> dict[tuple[str, int], int]:
    merged: dict[tuple[str, int], int] = {}
    for points, _ in consumer.commits:
        merged.update(points)
    return merged


def test_settled_records_are_committed_as_soon_as_the_watermark_moves() -> None:
    worker, consumer, dead_letters, _, _ = build()
    consumer.queue = [message(i) for i in range(5)] + [message(5, raw=b"not json")]

    # Committed long before the old 1 s interval: as soon as the batch's answer settled it.
    took = asyncio.run(run_until(worker, lambda: last_commit(consumer).get((TOPIC, 0)) == 6))
    assert took < 0.8
    assert dead_letters.written == [(5, "decode_error")]
    assert any(asynchronous for _, asynchronous in consumer.commits)
    assert consumer.closed


def test_commits_are_coalesced_one_in_flight() -> None:
    worker, consumer, _, _, _ = build(max_records=1, max_wait=0.0)
    consumer.queue = [message(i) for i in range(40)]
    in_flight: list[int] = []
    real_commit = consumer.commit

    def commit(*, offsets: list[TopicPartition], asynchronous: bool) -> None:
        in_flight.append(1 if consumer._pending_commit is not None and asynchronous else 0)
        real_commit(offsets=offsets, asynchronous=asynchronous)

    consumer.commit = commit  # type: ignore[method-assign]
    asyncio.run(run_until(worker, lambda: last_commit(consumer).get((TOPIC, 0)) == 40))
    assert not any(in_flight), "a commit was started while another was in flight"
    assert len(consumer.commits) < 40  # 40 settled batches, fewer commits


def test_held_counts_come_from_the_batches_and_are_zero_after_a_revoke_mid_run() -> None:
    """Issue 7 #2: a revoke used to subtract the bytes of closed batches twice (-400 where 0 was due)."""
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return accepted(request)

    worker, consumer, _, metrics, _ = build(slow, lanes=1, max_records=4, partitions=(0, 1))  # type: ignore[arg-type]
    sizes = {}
    for i in range(12):
        m = message(i, partition=i % 2)
        sizes[(i % 2, i)] = len(m.value() or b"")
        consumer.queue.append(m)

    async def go() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        while consumer.queue:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        # One batch in flight (held by the API), two closed and waiting, none open.
        records, nbytes = worker.task.buffered()
        assert (records, nbytes) == (12, sum(sizes.values()))
        in_flight = worker.task.lanes[0].inflight
        assert in_flight is not None and len(worker.task.lanes[0].ready) == 2
        consumer.revoke([1])
        # Kept: partition 0's records, and the batch in flight whole (its answer will settle nothing of 1).
        kept = {k for k in sizes if k[0] == 0} | {(r.partition, r.offset) for r in in_flight.items}
        assert worker.task.buffered() == (len(kept), sum(sizes[k] for k in kept))
        release.set()
        while worker.task.buffered() != (0, 0):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.1)  # the gauges are refreshed once a second
        assert metrics.value("buffered_records", {"sink": "s"}) == 0
        assert metrics.value("buffered_bytes", {"sink": "s"}) == 0
        stop.set()
        await runner

    asyncio.run(go())
    # Partition 0 (offsets 0, 2, ..., 10) committed to its end; the revoked partition 1 not by us.
    assert last_commit(consumer)[(TOPIC, 0)] == 11


def test_lag_series_of_a_revoked_partition_is_removed() -> None:
    worker, consumer, _, metrics, _ = build(partitions=(0, 1))

    async def go() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.02)
        stats = {"topics": {TOPIC: {"partitions": {"0": {"consumer_lag": 5}, "1": {"consumer_lag": 7}}}}}
        worker.on_stats(orjson.dumps(stats).decode())
        assert metrics.value("consumer_lag", {"sink": "s", "topic": TOPIC, "partition": "1"}) == 7
        consumer.revoke([1])
        worker.on_stats(orjson.dumps(stats).decode())  # librdkafka may still report it: not ours now
        stop.set()
        await runner

    asyncio.run(go())
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "activity_connector_consumer_lag", {"sink": "s", "topic": TOPIC, "partition": "1"}
        )
        is None
    )
    assert metrics.value("consumer_lag", {"sink": "s", "topic": TOPIC, "partition": "0"}) == 5


def test_kafka_connected_and_readiness_follow_the_brokers() -> None:
    worker, _, _, metrics, _ = build()
    worker.assigned = True
    assert worker.ready()
    worker.on_kafka_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert not worker.ready() and metrics.value("kafka_connected", {"sink": "s"}) == 0
    worker.on_stats(orjson.dumps({"brokers": {"b1": {"state": "UP"}}}).decode())
    assert worker.ready() and metrics.value("kafka_connected", {"sink": "s"}) == 1


class _SlowSchema:
    """A decoder whose writer schema is 'being fetched' until `known` is set."""

    def __init__(self) -> None:
        self.known = False
        self.inner = JsonDecoder()

    def decode(self, value: bytes) -> dict[str, Any]:
        if not self.known:
            raise SchemaPending(7)
        return self.inner.decode(value)


def test_records_waiting_for_a_writer_schema_stop_intake_and_pause_only_if_the_wait_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("connector.sink.worker.HOLD_BEFORE_PAUSE", 0.3)

    async def scenario(wait: float) -> tuple[int, int, bool]:
        worker, consumer, _, metrics, client = build()
        decoder = _SlowSchema()
        worker.task.decoder = decoder
        consumer.queue = [message(i) for i in range(30)]
        calls = 0
        consume = consumer.consume

        def counting(num_messages: int, timeout: float) -> list[Message]:
            nonlocal calls
            calls += 1
            return consume(num_messages, timeout)

        consumer.consume = counting  # type: ignore[method-assign]
        paused_ever = False

        async def learn_later() -> None:
            nonlocal paused_ever
            loop = asyncio.get_running_loop()
            end = loop.time() + wait
            while loop.time() < end:
                paused_ever |= bool(consumer.paused)
                await asyncio.sleep(0.01)
            decoder.known = True

        learner = asyncio.create_task(learn_later())
        calls_before = -1

        def done() -> bool:
            nonlocal calls_before
            if not decoder.known and calls_before < 0 and worker.task.input_held():
                calls_before = calls
            return metrics.value("records_delivered_total", {"sink": "s"}) == 30

        await run_until(worker, done)
        await learner
        await client.aclose()
        return calls_before, calls, paused_ever

    calls_at_hold, _, paused = asyncio.run(scenario(0.15))
    assert calls_at_hold == 1 and not paused  # a quick fetch: one consume, no pause (no refetch)
    _, _, paused = asyncio.run(scenario(0.8))
    assert paused  # a long one: the partitions pause, so intake stays bounded and callbacks are served


def test_a_budget_share_that_could_not_be_computed_is_computed_again_later() -> None:
    """A metadata lookup that fails (a timeout during a rollout) is asked again RESHARE_RETRY later; the
    partition counts are read afresh each time (a topic may have grown)."""
    worker, consumer, _, _, _ = build(partitions=(0, 1))
    partitions = [4]
    calls = 0

    def list_topics(timeout: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        topic = SimpleNamespace(error=None, partitions=dict.fromkeys(range(partitions[0])))
        return SimpleNamespace(topics={TOPIC: topic})

    consumer.list_topics = list_topics  # type: ignore[attr-defined]
    worker.on_assign(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    window = worker.task.service.rate_limiter.window
    worker._reshare(100.0)
    assert worker._reshare_due and window.share == 1.0  # not known: as it was
    worker._reshare(101.0)
    assert calls == 1  # not asked again at once
    worker._reshare(100.0 + RESHARE_RETRY)
    assert not worker._reshare_due and window.share == 0.5  # 2 of 4 partitions
    partitions[0] = 8  # the topic grew; the rebalance that follows asks again
    worker.on_assign(consumer, [TopicPartition(TOPIC, 2)])
    worker._reshare(200.0)
    assert window.share == 3 / 8


def test_a_buffer_full_of_open_batches_sends_them_without_waiting_for_max_wait() -> None:
    """Records spread over the lanes so that no batch reaches max_records within the buffer bound: intake
    stops, and the open batches go at once (they waited out max_wait, with nothing sent, before)."""
    worker, consumer, _, metrics, _ = build(lanes=2, max_records=50, max_wait=30.0)
    size = len(message(0).value() or b"")
    worker.backpressure = Backpressure(10 * size, 100)  # 30 records are 3 times the bound
    consumer.queue = [message(i) for i in range(30)]

    def delivered() -> bool:
        return metrics.value("records_delivered_total", {"sink": "s"}) == 30

    asyncio.run(run_until(worker, delivered, limit=5.0))
    assert metrics.value("batches_sent_total", {"sink": "s", "outcome": "success"}) == 2  # one per lane


def test_when_a_stop_lasts_the_partitions_pause_before_anything_more_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Consuming once more when the 2 s hold ends took what librdkafka had prefetched past the full buffer
    (review: 24 records held instead of 12)."""
    monkeypatch.setattr("connector.sink.worker.HOLD_BEFORE_PAUSE", 0.2)
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(202, json={"message": "ok", "importId": "i1"})

    worker, consumer, _, _, _ = build(slow, lanes=1, max_records=5, max_wait=30.0)  # type: ignore[arg-type]
    size = len(message(0).value() or b"")
    worker.backpressure = Backpressure(10 * size, 5)
    consumer.queue = [message(i) for i in range(200)]
    real = consumer.consume
    consumer.consume = lambda n, t: real(min(n, 12), t)  # type: ignore[method-assign,assignment]

    async def go() -> int:
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.6)
        records = worker.task.sending()[0]
        release.set()
        stop.set()
        await runner
        return records

    records = asyncio.run(go())
    # Stop at 12 records (bound: 10): expected 12 held; the consume at hold expiry adds 12 more.
    assert records == 12, records


def test_a_buffer_full_of_unacknowledged_dead_letters_does_not_split_batches() -> None:
    """Open batches are sent early only when they fill the buffer; dead letters awaiting the broker's
    answer split batches into small requests, each costing rate-limit budget (review: 20 requests)."""
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"importId": "i1", "status": "COMPLETED", "failedRecords": None})
        sizes.append(len(orjson.loads(request.content)["peopleActivities"]))
        return httpx.Response(202, json={"message": "ok", "importId": "i1"})

    worker, consumer, dead_letters, metrics, _ = build(handler, lanes=2, max_records=50, max_wait=1.0)
    size = len(message(0).value() or b"")
    worker.backpressure = Backpressure(40 * size, 100)
    # Slow broker acks: a dead letter is acknowledged 30 ms after it was written.
    written_at: dict[int, float] = {}
    real_write = dead_letters.write

    def write(record: Any, failure: Any) -> None:
        written_at[id(record)] = time.monotonic()
        real_write(record, failure)

    def poll() -> None:
        now = time.monotonic()
        ripe = [(r, f) for r, f in dead_letters._unacked if now - written_at[id(r)] > 0.03]
        dead_letters._unacked = [(r, f) for r, f in dead_letters._unacked if now - written_at[id(r)] <= 0.03]
        for r, f in ripe:
            dead_letters.written.append((r.offset, f.reason))
            worker.task.dead_lettered(r, f, True)

    dead_letters.write, dead_letters.poll = write, poll  # type: ignore[method-assign]
    # 4 valid records, then 36 undecodable ones of 4x the size, repeated: dead letters fill the buffer.
    msgs = [message(i) if i % 40 < 4 else message(i, raw=b"x" * (4 * size)) for i in range(400)]
    consumer.queue = msgs
    real = consumer.consume
    consumer.consume = lambda n, t: real(min(n, 40), t)  # type: ignore[method-assign,assignment]
    delivered = lambda: metrics.value("records_delivered_total", {"sink": "s"}) == 40  # noqa: E731
    asyncio.run(run_until(worker, delivered, limit=20.0))
    # 40 valid records, 2 lanes: a batch per lane (by max_wait), not a request of 2 at every stop.
    assert len(sizes) <= 4, sizes


def test_a_share_of_zero_while_every_partition_is_revoked_does_not_hold_the_api_after() -> None:
    """An answer that arrived while the sink owned nothing (share 0) held every request to the window's end
    (an hour) after the partitions came back (review)."""
    worker, consumer, _, _, _ = build(partitions=(0, 1))
    topic = SimpleNamespace(error=None, partitions=dict.fromkeys(range(2)))
    consumer.list_topics = lambda timeout: SimpleNamespace(topics={TOPIC: topic})  # type: ignore[attr-defined]
    rl = worker.task.service.rate_limiter
    worker.on_assign(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    worker._reshare(1.0)
    assert rl.window.share == 1.0
    worker.on_revoke(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])  # eager / lost
    worker._reshare(2.0)
    # the batch left in flight is answered meanwhile
    n = rl.window.started
    rl.observe(202, httpx.Headers({"x-ratelimit-remaining": "900", "x-ratelimit-reset": "3600"}), n)
    worker.on_assign(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    worker._reshare(3.0)
    assert rl.window.share == 1.0
    now = time.monotonic()
    wait = rl.window.budget.earliest(now) - now
    assert wait < 10, f"900 of the window's requests left, yet the next request waits {wait:.0f} s"


def test_a_partition_revoked_while_paused_and_assigned_again_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """librdkafka keeps the app pause flag of a toppar across revoke/assign (only LIB_PAUSE is reset in
    rdkafka_assignment.c); the fake consumer keeps it too."""
    monkeypatch.setattr("connector.sink.worker.HOLD_BEFORE_PAUSE", 0.1)
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            await release.wait()
        if request.method == "POST":
            return httpx.Response(202, json={"message": "ok", "importId": "i1"})
        return httpx.Response(200, json={"importId": "i1", "status": "COMPLETED", "failedRecords": None})

    worker, consumer, _, _, _ = build(slow, lanes=1, max_records=5, partitions=(0, 1))  # type: ignore[arg-type]
    size = len(message(0).value() or b"")
    worker.backpressure = Backpressure(10 * size, 5)
    consumer.queue = [message(i, partition=i % 2) for i in range(12)]

    async def go() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.4)
        assert consumer.paused == {(TOPIC, 0), (TOPIC, 1)}
        consumer.revoke([1])  # a replica joined: partition 1 moves away while paused
        release.set()  # the API is back: the buffer drains, intake resumes
        while worker.backpressure.paused:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        consumer.callbacks["on_assign"](consumer, [TopicPartition(TOPIC, 1)])  # it left again: 1 is back
        consumer.queue.append(message(100, partition=1))
        await asyncio.sleep(0.5)
        stop.set()
        await runner

    asyncio.run(go())
    assert (TOPIC, 1) not in consumer.paused, "partition 1 is paused in the client and never resumed"


def test_the_share_is_not_looked_up_while_kafka_is_unreachable_and_failures_back_off() -> None:
    """Each lookup blocks the loop for its timeout: during a Kafka outage none is made, and lookups that
    fail wait longer each time (review: 2 s of every 5 s blocked)."""
    worker, consumer, _, _, _ = build(partitions=(0,))
    calls: list[float] = []

    def list_topics(timeout: float) -> Any:
        calls.append(timeout)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    consumer.list_topics = list_topics  # type: ignore[attr-defined]
    worker.on_assign(consumer, [TopicPartition(TOPIC, 0)])
    worker.connected = False
    for second in range(120):
        worker._reshare(float(second))
    assert calls == []
    worker.connected = True
    for second in range(120, 240):
        worker._reshare(float(second))
    assert 3 <= len(calls) <= 6  # at 120, 125, 135, 155, 195 s: not every 5 s (24 times)
    assert worker._reshare_due


def test_empty_records_waiting_for_their_dead_letters_stop_intake_too() -> None:
    """Tombstones and empty values counted 0 bytes: while the dead-letter topic did not acknowledge,
    60,000 of 60,000 were consumed and held with no pause."""
    worker, consumer, dead_letters, metrics, _ = build(lanes=1)
    dead_letters.poll = lambda: None  # type: ignore[method-assign]  # the broker never acknowledges
    bound = 1 << 20
    worker.backpressure = Backpressure(bound, 10, RECORD_COST)
    consumer.queue = [
        Message(topic=TOPIC, partition=0, offset=i, key=None, value=None if i % 2 else b"")
        for i in range(60_000)
    ]

    async def go() -> int:
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.5)
        held = worker.task.sending()[0]
        stop.set()
        await runner
        return held

    held = asyncio.run(go())
    consumed = 60_000 - len(consumer.queue)
    # Intake stopped at the bound (plus what one consume call takes), not after every record.
    assert held == consumed and consumed < bound // RECORD_COST + 1000, consumed
    assert metrics.value("records_consumed_total", {"sink": "s", "topic": TOPIC}) == consumed
    assert last_commit(consumer).get((TOPIC, 0), 0) == 0  # nothing acknowledged, nothing committed


def test_commits_go_on_and_are_answered_while_intake_holds() -> None:
    """librdkafka answers asynchronous commits only inside consume(), which is not called while intake
    holds: the commit in flight stayed unanswered for the whole hold and nothing newer was committed (a
    SIGKILL then repeated 2,800 records where 800 were in flight)."""
    worker, consumer, _, metrics, _ = build()
    tp = (TOPIC, 0)
    worker.offsets.assign(tp)
    worker._holding = lambda: True  # type: ignore[method-assign]

    async def go() -> None:
        for offset in range(3):
            worker.offsets.track(tp, offset)
            worker.offsets.settle(tp, worker.offsets.epoch(tp), offset)
            worker.commit(100.0 + offset)
            while worker._thread_commit is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.001)

    asyncio.run(go())
    assert consumer.commits == [({tp: 1}, False), ({tp: 2}, False), ({tp: 3}, False)]
    state = worker.offsets.state(tp)
    assert state is not None and state.acked == 3  # answered, with no consume() call
    assert metrics.value("commits_total", {"sink": "s", "outcome": "success"}) == 3


def test_open_batches_full_by_the_per_record_cost_are_sent_at_once() -> None:
    """Review: intake stopped on bytes plus the per-record cost, but open batches were closed early only
    on raw bytes: small records waited out max_wait with nothing in flight."""
    worker, consumer, _, metrics, _ = build(lanes=2, max_records=50, max_wait=30.0)
    size = len(message(0).value() or b"")
    worker.backpressure = Backpressure(30 * (size + RECORD_COST), 1000, RECORD_COST)  # raw: far below
    consumer.queue = [message(i) for i in range(30)]

    def delivered() -> bool:
        return metrics.value("records_delivered_total", {"sink": "s"}) == 30

    asyncio.run(run_until(worker, delivered, limit=5.0))


class _StuckProducer:
    """A broker that never acknowledges a dead letter (an outage, the topic's leader gone)."""

    def produce(self, *args: Any, **kwargs: Any) -> None:
        return None

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        time.sleep(timeout)
        return 1


def test_a_sink_stopping_after_a_fatal_error_does_not_freeze_the_shared_loop() -> None:
    """Review: flush, the synchronous commit and close() ran on the loop thread: a sink stopping after a
    401, while its dead-letter topic did not answer, froze every other sink and /healthz for
    shutdown_timeout (10 s seen)."""
    from connector.deadletter import DeadLetterWriter
    from connector.errors import FatalError

    worker, consumer, _, metrics, _ = build()
    worker.shutdown_timeout = 1.5
    letters = DeadLetterWriter(
        _StuckProducer(),  # type: ignore[arg-type]
        "t.dlq",
        "s",
        "rally",
        metrics.sink("s"),
        worker.task.dead_lettered,
    )
    worker.dead_letters = letters
    worker.task.attach(letters)
    consumer.queue = [message(0, raw=b"not json")]

    async def go() -> float:
        stop = asyncio.Event()
        gaps: list[float] = []

        async def other_sink() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        other = asyncio.create_task(other_sink())
        run = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.2)
        worker.task.fatal = FatalError("s: HTTP 401")
        with pytest.raises(FatalError):
            await run
        stop.set()
        await other
        return max(gaps)

    assert asyncio.run(go()) < 0.5


def test_the_checks_before_the_first_record_heed_a_stop_and_keep_the_heartbeat() -> None:
    """Review: the dead-letter topic check ran in a thread the loop awaited whole: a SIGTERM waited for
    its timeouts (up to ~45 s), subscribe() ran after the stop, and the stale heartbeat read as stuck."""
    worker, consumer, _, _, _ = build()
    worker._preflight = lambda: time.sleep(3)
    subscribed: list[bool] = []
    real = consumer.subscribe

    def subscribe(topics: list[str], **callbacks: Callable[..., None]) -> None:
        subscribed.append(True)
        real(topics, **callbacks)

    consumer.subscribe = subscribe  # type: ignore[method-assign]

    async def go() -> tuple[float, float]:
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(1.2)
        beat = time.monotonic() - worker.heartbeat
        stop.set()
        started = time.monotonic()
        await run
        return beat, time.monotonic() - started

    beat, stopped = asyncio.run(go())
    assert beat < 1.0 and stopped < 1.0 and subscribed == []
    assert worker.task.service.rate_limiter.window.partitions.get("s") == (0, 0)  # its share freed
