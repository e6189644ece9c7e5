"""One sink: consume → decode → validate → batch → send → settle (commit or dead-letter).

This is the only module that wires the stages together. It runs on the asyncio loop: `consume()` is
called with a zero timeout so it never blocks the loop (librdkafka would otherwise wait the whole timeout
for a batch to fill), requests run as tasks, and every call back from librdkafka (rebalance, commit,
statistics, dead-letter acknowledgement) happens on this same thread.

Ordering: records are spread over `delivery.concurrency` lanes by key, and a lane has at most one request
in flight, so records with the same key reach the destination in offset order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from connector.codec import DecodeError, make_decoder, validator_for
from connector.config import SinkSettings
from connector.deadletter import DeadLetterWriter
from connector.delivery.auth import credentials
from connector.delivery.ratelimit import ApiWindows
from connector.delivery.service import BatchResult, DeliveryService, Failure, Tracked, make_client
from connector.destinations import for_sink
from connector.errors import DeadLetterError, FatalError
from connector.kafka import consumer_config, producer_config
from connector.metrics import Metrics
from connector.records import Record
from connector.sink.backpressure import Backpressure
from connector.sink.batcher import Batch, Batcher
from connector.sink.offsets import OffsetTracker

log = logging.getLogger(__name__)

CONSUME_MAX = 500  # messages handed over per consume() call
IDLE_SLEEP = 0.01  # seconds to yield when Kafka had nothing for us
COMMIT_INTERVAL = 1.0


class Lane:
    """An ordered line of batches with at most one request in flight."""

    __slots__ = ("batcher", "busy", "ready")

    def __init__(self, batcher: Batcher[Record]) -> None:
        self.batcher = batcher
        self.ready: deque[Batch[Record]] = deque()
        self.busy = False


class SinkPipeline:
    def __init__(
        self,
        settings: SinkSettings,
        kafka: Mapping[str, Any],
        metrics: Metrics,
        shutdown_timeout: float = 30.0,
        index: int = 0,
        windows: ApiWindows | None = None,
    ) -> None:
        self.settings = settings
        self.shutdown_timeout = shutdown_timeout
        self.name = settings.name
        self.m = metrics.sink(settings.name)
        self.destination, max_records = for_sink(settings, index)
        self.validate = validator_for(self.destination.schema_file)
        self.decoder = make_decoder(settings.format, settings.schema, settings.schema_registry_url)
        b = settings.batch
        self.max_bytes = b.max_bytes
        self.lanes = [
            Lane(Batcher(max_records, b.max_bytes, b.max_wait)) for _ in range(settings.delivery.concurrency)
        ]
        self.offsets = OffsetTracker()
        self.backpressure = Backpressure(b.max_buffered_bytes, max_records * len(self.lanes))

        config = consumer_config(kafka, settings.group_id, settings.consumer)
        config.update(
            stats_cb=self._on_stats,
            on_commit=self._on_commit,
            error_cb=self._on_kafka_error,
        )
        self.consumer = Consumer(config)
        self.producer = Producer({**producer_config(kafka), "error_cb": self._on_kafka_error})
        self.dead_letters = DeadLetterWriter(
            self.producer,
            settings.dead_letter_topic,
            settings.name,
            self.destination.type,
            self.m,
            self._on_dead_lettered,
        )
        dest = settings.destination
        creds = credentials(dest.auth)
        self.client = make_client(dest.url, creds.headers, settings.delivery, creds.auth)
        self._auth = creds.auth
        self.service = DeliveryService(
            self.destination,
            self.client,
            settings.delivery,
            self.m,
            fail_on_error=settings.on_error == "fail",
            secrets=creds.secrets,
            # Sinks sending to one API with one credential share its rate-limit budget.
            window=(windows or ApiWindows()).get(dest.url, creds.secrets),
        )
        self.fatal: BaseException | None = None
        self.assigned = False
        self.heartbeat = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused: set[tuple[str, int]] = set()

    # --- the loop -------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set or a fatal error; then flush, settle, commit and close."""
        self.consumer.subscribe(
            self.settings.subscription,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        next_commit = time.monotonic() + COMMIT_INTERVAL
        try:
            while not stop.is_set() and self.fatal is None:
                messages = self.consumer.consume(CONSUME_MAX, 0)
                now = self.heartbeat = time.monotonic()
                if messages:
                    self._ingest(messages, now)
                self._close_due(now)
                self._dispatch()
                self.dead_letters.poll()
                self._apply_backpressure()
                if now >= next_commit:
                    self._commit()
                    self._update_gauges()
                    next_commit = now + COMMIT_INTERVAL
                await asyncio.sleep(0 if messages else IDLE_SLEEP)
        finally:
            await self._shutdown()
        if self.fatal is not None:
            raise self.fatal

    def _ingest(self, messages: list[Message], now: float) -> None:
        """The per-record hot path: track, decode, validate, batch. Failures go to the dead-letter topic."""
        state_of, lanes, nlanes = self.offsets.state, self.lanes, len(self.lanes)
        decode, validate, check = self.decoder.decode, self.validate, self.destination.check
        max_bytes = self.max_bytes
        consumed: dict[str, int] = {}
        accepted = accepted_bytes = 0
        for message in messages:
            if message.error() is not None:
                self._consumer_error(message)
                continue
            topic: str = message.topic()  # type: ignore[assignment]
            partition: int = message.partition()  # type: ignore[assignment]
            state = state_of((topic, partition))
            if state is None:
                continue  # a message of a partition revoked since it was fetched
            offset: int = message.offset()  # type: ignore[assignment]
            state.pending.append(offset)  # holds the commit point back until settled
            value = message.value()
            size = len(value) if value is not None else 0
            record = Record(message, topic, partition, offset, state.epoch, size)
            consumed[topic] = consumed.get(topic, 0) + 1
            if value is None:
                self._dead_letter(record, Failure("decode_error", "the record has no value (tombstone)"))
                continue
            if size > max_bytes:
                self._dead_letter(
                    record,
                    Failure("record_too_large", f"{size} bytes is above batch.max_bytes ({max_bytes})"),
                )
                continue
            try:
                payload = decode(value)
            except DecodeError as exc:
                self._dead_letter(record, Failure("decode_error", str(exc)))
                continue
            problem = validate(payload) or check(payload)
            if problem is not None:
                self._dead_letter(record, Failure("invalid_record", problem))
                continue
            record.payload = payload
            key = message.key()
            lane = lanes[(hash(key) if key is not None else partition) % nlanes]
            for closed in lane.batcher.add(record, size, now):
                lane.ready.append(closed)
            accepted += 1
            accepted_bytes += size
        self.backpressure.add(accepted, accepted_bytes)
        for topic, n in consumed.items():
            self.m.consumed(topic, n)

    def _consumer_error(self, message: Message) -> None:
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            log.warning("%s: consumer error: %s", self.name, error)
            if error.fatal():
                self.fatal = KafkaException(error)

    def _close_due(self, now: float) -> None:
        for lane in self.lanes:
            batch = lane.batcher.take_due(now)
            if batch is not None:
                lane.ready.append(batch)

    def _dispatch(self) -> None:
        for lane in self.lanes:
            if not lane.busy and lane.ready:
                lane.busy = True
                self._spawn(self._deliver(lane, lane.ready.popleft()))

    async def _deliver(self, lane: Lane, batch: Batch[Record]) -> None:
        try:
            result: BatchResult = await self.service.deliver(batch.items)
        except FatalError as exc:
            log.error("%s: %s", self.name, exc)
            self.fatal = exc
            return  # the lane stays busy: nothing more is sent, nothing of this batch is settled
        except Exception as exc:
            log.exception("%s: delivery failed unexpectedly", self.name)
            self.fatal = exc
            return
        finally:
            self.backpressure.remove(len(batch), batch.nbytes)
        # With ack: completed, records in a running import settle only once it is terminal.
        held = {id(r) for t in result.tracked for r in t.records} if self.destination.ack_completed else set()
        for record in result.delivered:
            if id(record) not in held:
                self.offsets.settle((record.topic, record.partition), record.epoch, record.offset)
        for record, failure in result.failed:
            self._dead_letter(record, failure)
        for tracked in result.tracked:
            if held:
                self.backpressure.add(len(tracked.records), sum(r.size for r in tracked.records))
            self._spawn(self._reconcile(tracked))
        lane.busy = False

    async def _reconcile(self, tracked: Tracked) -> None:
        """Follow an import to its end; its failed records are dead-lettered with reason import_failed."""
        try:
            done = await self.service.status(tracked)
        except FatalError as exc:
            log.error("%s: %s", self.name, exc)
            self.fatal = exc
            return
        hold = self.destination.ack_completed
        for i, record in enumerate(tracked.records):
            message = done.failed.get(i)
            if message is not None:
                self._dead_letter(
                    record, Failure("import_failed", message, attempts=1, import_id=tracked.import_id)
                )
            elif hold:
                self.offsets.settle((record.topic, record.partition), record.epoch, record.offset)
        if hold:
            self.backpressure.remove(len(tracked.records), sum(r.size for r in tracked.records))
        if done.failed:
            log.warning("%s: import %s: %d records failed", self.name, tracked.import_id, len(done.failed))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- settling -------------------------------------------------------------------------------------------

    def _dead_letter(self, record: Record, failure: Failure) -> None:
        if self.offsets.epoch((record.topic, record.partition)) != record.epoch:
            return  # revoked meanwhile: the partition's new owner decides about this record
        self.dead_letters.write(record, failure)

    def _on_dead_lettered(self, record: Record, failure: Failure, ok: bool) -> None:
        if ok:
            self.offsets.settle((record.topic, record.partition), record.epoch, record.offset)
        elif self.fatal is None:
            self.fatal = DeadLetterError(
                f"{self.name}: could not write to dead-letter topic {self.dead_letters.topic}"
            )

    def _commit(self, sync: bool = False) -> None:
        points = self.offsets.to_commit()
        if not points:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in points.items()]
        try:
            if sync:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self.m.commit("failed")
            log.warning("%s: commit failed: %s", self.name, exc)
            for tp in offsets:
                self.offsets.commit_failed((tp.topic, tp.partition), tp.offset)

    # --- librdkafka callbacks (run inside consume()/poll() on this thread) ------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.offsets.assign((p.topic, p.partition))
        self.assigned = True
        log.info("%s: assigned %s", self.name, [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._close_partitions(partitions, commit=True)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._close_partitions(partitions, commit=False)

    def _close_partitions(self, partitions: list[TopicPartition], commit: bool) -> None:
        """Kafka Connect's close(): commit what is settled, drop what is buffered for these partitions."""
        gone = {(p.topic, p.partition) for p in partitions}

        def drop(r: Record) -> bool:
            return (r.topic, r.partition) in gone

        for lane in self.lanes:
            removed = lane.batcher.discard(drop, lambda r: r.size)
            for batch in lane.ready:
                removed += [r for r in batch.items if drop(r)]
                batch.items = [r for r in batch.items if not drop(r)]
            lane.ready = deque(b for b in lane.ready if b.items)
            self.backpressure.remove(len(removed), sum(r.size for r in removed))
        points = [(tp, self.offsets.revoke(tp)) for tp in gone]
        self._paused -= gone
        to_commit = [TopicPartition(t, p, o) for (t, p), o in points if o is not None]
        if commit and to_commit:
            try:
                self.consumer.commit(offsets=to_commit, asynchronous=False)
            except KafkaException as exc:
                log.warning("%s: commit on revoke failed: %s", self.name, exc)
        log.info("%s: %s %s", self.name, "revoked" if commit else "lost", sorted(gone))

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self.m.commit("failed" if error is not None else "success")
        if error is not None:
            # Typically ILLEGAL_GENERATION during a rebalance: commit these points again next time.
            log.warning("%s: commit failed: %s", self.name, error)
            for tp in partitions:
                self.offsets.commit_failed((tp.topic, tp.partition), tp.offset)

    def _on_stats(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                lag = p.get("consumer_lag", -1)
                if pid != "-1" and lag >= 0:
                    self.m.lag(topic, int(pid), lag)

    def _on_kafka_error(self, error: KafkaError) -> None:
        log.warning("%s: kafka: %s", self.name, error)
        if error.fatal() and self.fatal is None:
            self.fatal = KafkaException(error)

    # --- backpressure, gauges, shutdown ---------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        bp = self.backpressure
        change = bp.update(self.service.rate_limiter.held())
        if change is True:
            log.info(
                "%s: pausing partitions (%d bytes buffered, held back: %s)",
                self.name,
                bp.bytes,
                self.service.rate_limiter.held(),
            )
        elif change is False:
            if self._paused:
                self.consumer.resume([TopicPartition(t, p) for t, p in self._paused])
                self._paused.clear()
            self.m.paused.set(0)
            log.info("%s: resuming partitions", self.name)
        if bp.paused:
            # Also pause partitions assigned while paused.
            newly = set(self.offsets.partitions()) - self._paused
            if newly:
                self.consumer.pause([TopicPartition(t, p) for t, p in newly])
                self._paused |= newly
                self.m.paused.set(len(self._paused))

    def _update_gauges(self) -> None:
        self.m.buffered_records.set(self.backpressure.records)
        self.m.buffered_bytes.set(self.backpressure.bytes)
        self.service.rate_limiter.account_stall()

    def idle(self) -> bool:
        """Nothing buffered, nothing in flight, no dead letter awaiting its acknowledgement."""
        return (
            not self._tasks
            and self.dead_letters.pending == 0
            and all(not lane.ready and lane.batcher.open_batch is None for lane in self.lanes)
        )

    async def _shutdown(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        if self.fatal is None:
            for lane in self.lanes:
                batch = lane.batcher.flush()
                if batch is not None:
                    lane.ready.append(batch)
            while self.fatal is None and time.monotonic() < deadline and not self.idle():
                self._dispatch()
                self.dead_letters.poll()
                await asyncio.sleep(0.01)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.dead_letters.flush(max(1.0, deadline - time.monotonic()))
        self._commit(sync=True)
        self._update_gauges()
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("%s: closing the consumer: %s", self.name, exc)
        # Dead letters not acknowledged by now were never committed past: purging them loses nothing, and
        # close() cannot then wait on an unreachable broker. Closing ends librdkafka's threads now rather
        # than whenever the object is collected (by then the broker may be gone, and it logs errors).
        self.producer.purge()
        self.producer.close()
        await self.client.aclose()
        if self._auth is not None:
            await self._auth.aclose()
        log.info("%s: stopped", self.name)
