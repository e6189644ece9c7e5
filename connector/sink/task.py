"""The task side of a sink (as Kafka Connect's SinkTask): decode → map → validate → batch → deliver → settle.

It is handed consumed messages (`put`), closes batches by count, bytes and time, delivers them through
the shared send stack, and settles each record: delivered, or written to the dead-letter topic and
acknowledged. Settled offsets go to the OffsetTracker it shares with the worker, which commits them.
It never calls Kafka's consumer: the worker does (consume, pause, commit, rebalance).

Ordering: records are spread over `delivery.concurrency` lanes by key, and a lane has at most one request
in flight, so records with the same key reach the destination in offset order.

What the sink holds (for the memory bound and the `buffered_*` gauges) is derived from the batches it
holds, never counted by hand: each lane's open batch, its closed batches, its batch in flight, the
records of imports still followed, and dead letters the broker has not acknowledged yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from confluent_kafka import Message

from connector.codec import DecodeError, Decoder, Mapper, MappingError, SchemaPending, Validator
from connector.codec.avro import ConfluentAvroDecoder
from connector.codec.registry import SchemaNotFound, SchemaRegistry
from connector.delivery.imports import ImportFollower
from connector.delivery.service import DeliveryService
from connector.destinations.base import Destination
from connector.errors import ConnectorError, FatalError, RegistryError
from connector.metrics import SinkMetrics
from connector.outcomes import BatchResult, Failure
from connector.records import Record
from connector.sink.batcher import Batch, Batcher
from connector.sink.offsets import OffsetTracker, TopicPartition
from connector.sink.settle import DeadLetters, Settle

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # seconds cancelled tasks get to end at shutdown
REGISTRY_MAX_BACKOFF = 30.0  # seconds between tries to fetch a schema while the registry cannot answer


def _size(record: Record) -> int:
    return record.size


class Lane:
    """An ordered line of batches with at most one request in flight."""

    __slots__ = ("batcher", "inflight", "ready")

    def __init__(self, batcher: Batcher[Record]) -> None:
        self.batcher = batcher
        self.ready: deque[Batch[Record]] = deque()
        self.inflight: Batch[Record] | None = None

    def batches(self) -> Iterable[Batch[Record]]:
        if self.batcher.open_batch is not None:
            yield self.batcher.open_batch
        yield from self.ready
        if self.inflight is not None:
            yield self.inflight


class SinkTask:
    def __init__(
        self,
        name: str,
        decoder: Decoder,
        validate: Validator,
        destination: Destination,
        service: DeliveryService,
        offsets: OffsetTracker,
        metrics: SinkMetrics,
        *,
        lanes: int,
        max_records: int,
        max_bytes: int,
        max_wait: float,
        mapper: Mapper | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.name = name
        self.decoder = decoder
        self.validate = validate
        self.destination = destination
        self.service = service
        self.offsets = offsets
        self.m = metrics
        self.max_bytes = max_bytes
        self.mapper = mapper
        # avro-confluent: writer schemas come from the registry, fetched in the background.
        self.registry = registry
        self._held: list[Message] = []  # consumed, waiting (in order) for a writer schema to arrive
        self._fetching: set[int] = set()
        self._registry_up = True
        self.lanes = [Lane(Batcher(max_records, max_bytes, max_wait)) for _ in range(lanes)]
        self.fatal: BaseException | None = None
        self.settle = Settle(name, offsets, metrics, destination.ack_completed, self._fail)
        self.imports = self.settle.imports = ImportFollower(
            service, self.settle.import_ended, self.settle.imports_unfollowed, parallel=len(self.lanes)
        )
        self.dead_letters: DeadLetters | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._follower: asyncio.Task[None] | None = None

    def attach(self, dead_letters: DeadLetters) -> None:
        """The dead-letter writer; it calls `dead_lettered` once the broker has answered."""
        self.dead_letters = self.settle.dead_letters = dead_letters

    def _fail(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc

    # --- put: the per-record hot path ----------------------------------------------------------------------

    def put(self, messages: list[Message], now: float) -> list[Message]:
        """Track, decode, validate and batch consumed messages; failures go to the dead-letter topic.
        Returns the messages that carry a consumer error instead of a record, for the worker.

        A record whose writer schema is still being fetched waits, with every message after it (order is
        kept): they are tried again on the next call, whose `messages` may be empty."""
        if self._held:
            messages, self._held = [*self._held, *messages], []
        state_of, lanes, nlanes = self.offsets.state, self.lanes, len(self.lanes)
        decode, validate, check = self.decoder.decode, self.validate, self.destination.check
        from_api_names, mapper = self.destination.from_api_names, self.mapper
        max_bytes = self.max_bytes
        consumed: dict[str, int] = {}
        errors: list[Message] = []
        for index, message in enumerate(messages):
            if message.error() is not None:
                errors.append(message)
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
                self.dead_letter(record, Failure("decode_error", "the record has no value (tombstone)"))
                continue
            if size > max_bytes:
                self.dead_letter(
                    record,
                    Failure("record_too_large", f"{size} bytes is above batch.max_bytes ({max_bytes})"),
                )
                continue
            try:
                payload = decode(value)
            except DecodeError as exc:
                self.dead_letter(record, Failure("decode_error", str(exc)))
                continue
            except SchemaPending as pending:
                state.pending.pop()  # not consumed yet after all: tracked again when it is
                consumed[topic] -= 1
                self._held = messages[index:]
                self._fetch(pending.schema_id)
                break
            if mapper is not None:
                try:
                    payload = mapper(payload)
                except MappingError as exc:
                    self.dead_letter(record, Failure("invalid_record", f"mapping: {exc}"))
                    continue
            elif from_api_names is not None:
                payload = from_api_names(payload)
            problem = validate(payload) or check(payload)
            if problem is not None:
                self.dead_letter(record, Failure("invalid_record", problem))
                continue
            record.payload = payload
            key = message.key()
            lane = lanes[(hash(key) if key is not None else partition) % nlanes]
            for closed in lane.batcher.add(record, size, now):
                lane.ready.append(closed)
        for topic, n in consumed.items():
            self.m.consumed(topic, n)
        return errors

    # --- writer schemas (avro-confluent) --------------------------------------------------------------------

    def input_held(self) -> bool:
        """Consumed records wait for a writer schema: the worker pauses intake meanwhile."""
        return bool(self._held)

    def _fetch(self, schema_id: int) -> None:
        if schema_id not in self._fetching and self.registry is not None:
            self._fetching.add(schema_id)
            self._spawn(self._fetch_schema(schema_id))

    async def _fetch_schema(self, schema_id: int) -> None:
        """Fetch a writer schema until the registry answers; while it cannot, the records wait."""
        assert self.registry is not None and isinstance(self.decoder, ConfluentAvroDecoder)
        delay = 1.0
        try:
            while True:
                try:
                    writer, references = await self.registry.schema(schema_id)
                    self.decoder.learn(schema_id, writer, references)
                except SchemaNotFound as exc:
                    log.warning("%s: %s; its records are dead-lettered (decode_error)", self.name, exc)
                    self.decoder.learn(schema_id, None, [])
                except RegistryError as exc:
                    if self._registry_up:
                        self._registry_up = False
                        self.m.schema_registry_available.set(0)
                        log.warning("%s: %s; records wait for it (nothing is dead-lettered)", self.name, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, REGISTRY_MAX_BACKOFF)
                    continue
                except (FatalError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    # A schema fastavro refuses, references of an unknown shape: ids never change, so its
                    # records can never be decoded; they are dead-lettered, and this is said once.
                    log.warning(
                        "%s: schema id %d is unusable (%s: %s); its records are dead-lettered",
                        self.name,
                        schema_id,
                        type(exc).__name__,
                        exc,
                    )
                    self.decoder.learn(schema_id, None, [])
                break
            if not self._registry_up:
                self._registry_up = True
                self.m.schema_registry_available.set(1)
                log.info("%s: the schema registry answers again", self.name)
        except FatalError as exc:
            log.error("%s: %s", self.name, exc)
            self.fatal = exc
        finally:
            self._fetching.discard(schema_id)

    # --- batches out ---------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Close batches whose time has come and start a request on every idle lane that has one."""
        for lane in self.lanes:
            batch = lane.batcher.take_due(now)
            if batch is not None:
                lane.ready.append(batch)
            if lane.inflight is None and lane.ready:
                lane.inflight = lane.ready.popleft()
                self._spawn(self._deliver(lane, lane.inflight))
        if self.dead_letters is not None:
            self.dead_letters.poll()

    async def _deliver(self, lane: Lane, batch: Batch[Record]) -> None:
        try:
            result: BatchResult = await self.service.deliver(batch.items, self.settle.owned)
        except asyncio.CancelledError:
            lane.inflight = None  # shutdown: the batch is let go, unsettled
            raise
        except FatalError as exc:
            log.error("%s: %s", self.name, exc)
            self.fatal = exc
            return  # the lane stays busy: nothing more is sent, nothing of this batch is settled
        except Exception as exc:
            log.exception("%s: delivery failed unexpectedly", self.name)
            self.fatal = exc
            return
        self.settle.batch(result)
        if result.tracked and self._follower is None and self.imports.unsupported is None:
            self._follower = asyncio.create_task(self._follow())
        lane.inflight = None

    async def _follow(self) -> None:
        try:
            await self.imports.run()
        except ConnectorError as exc:
            log.error("%s: %s", self.name, exc)
            self.fatal = exc
        except Exception as exc:
            log.exception("%s: following imports failed unexpectedly", self.name)
            self.fatal = exc

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- settling (connector.sink.settle decides) -------------------------------------------------------

    def dead_letter(self, record: Record, failure: Failure) -> None:
        self.settle.dead_letter(record, failure)

    def dead_lettered(self, record: Record, failure: Failure, ok: bool, why: str = "") -> None:
        """The broker answered a dead-letter write."""
        self.settle.dead_lettered(record, failure, ok, why)

    # --- what is held --------------------------------------------------------------------------------------

    def buffered(self) -> tuple[int, int]:
        """(records, bytes) held in memory: what is being sent plus the records of imports still followed
        (the `buffered_*` gauges)."""
        records, nbytes = self.sending()
        following_records, following_bytes = self.following()
        return records + following_records, nbytes + following_bytes

    def sending(self) -> tuple[int, int]:
        """(records, bytes) of the batches held, dead letters not acknowledged yet, and records waiting
        for a writer schema: derived from what is held, never counted by hand."""
        records = nbytes = 0
        for lane in self.lanes:
            for batch in lane.batches():
                records += len(batch.items)
                nbytes += batch.nbytes
        if self.dead_letters is not None:
            dead_records, dead_bytes = self.dead_letters.held()
            records += dead_records
            nbytes += dead_bytes
        for message in self._held:
            value = message.value()
            records += 1
            nbytes += len(value) if value is not None else 0
        return records, nbytes

    def following(self) -> tuple[int, int]:
        """(records, bytes) of the imports still followed: kept, whatever `ack` says, to dead-letter those
        an import fails. They have a bound of their own (Backpressure): when the status polls fall behind,
        intake stops, data requests drain and the polls catch up."""
        records = nbytes = 0
        for tracked in self.imports.followed():
            records += len(tracked.records)
            nbytes += tracked.nbytes
        return records, nbytes

    def close_partitions(self, gone: set[TopicPartition]) -> None:
        """Kafka Connect's close(): forget what is buffered for these partitions. A batch in flight is
        left to finish: its answer settles nothing, as its records' epoch has moved on."""

        def keep(r: Record) -> bool:
            return (r.topic, r.partition) not in gone

        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]

        for lane in self.lanes:
            lane.batcher.retain(keep, _size)
            for batch in lane.ready:
                batch.retain(keep, _size)
            lane.ready = deque(b for b in lane.ready if b.items)
        # An import goes only when none of its records is kept: the others are still to be settled here
        # (revoked ones settle nothing, their epoch has moved on).
        self.imports.drop(lambda t: any(keep(r) for r in t.records))

    def idle(self) -> bool:
        """Nothing buffered, nothing in flight, no dead letter awaiting its acknowledgement."""
        pending = self.dead_letters.pending if self.dead_letters is not None else 0
        return not self._tasks and pending == 0 and not self.imports and self.buffered()[0] == 0

    def send_open_batches(self, at_least: int, record_cost: int = 0) -> None:
        """The buffer is full, and open batches hold at least `at_least` bytes of it (records spread over
        lanes such that none reaches max_records within the bound): close them now, rather than let
        intake wait out max_wait with nothing to send. Never while a lane has a batch in flight or waiting
        (those drain the buffer: closing more would only make smaller requests), nor when what fills the
        buffer is something else (dead letters not acknowledged yet, records waiting for a schema).
        Bytes count as for the bound: each record `record_cost` more."""
        if any(lane.inflight is not None or lane.ready for lane in self.lanes):
            return
        open_bytes = sum(
            b.nbytes + len(b.items) * record_cost for lane in self.lanes if (b := lane.batcher.open_batch)
        )
        if open_bytes >= at_least:
            self.flush()

    def flush(self) -> None:
        """Close every open batch whatever its age (shutdown)."""
        for lane in self.lanes:
            batch = lane.batcher.flush()
            if batch is not None:
                lane.ready.append(batch)

    async def stop(self, deadline: float, clock: Callable[[], float]) -> None:
        """Deliver what is held until `deadline`, then cancel what is still running."""
        if self.fatal is None:
            self.flush()
            while self.fatal is None and clock() < deadline and not self.idle():
                if self._held:  # a writer schema may have arrived: what waited for it goes on
                    self.put([], clock())
                    self.flush()
                self.tick(clock())
                await asyncio.sleep(0.01)
        running = [*self._tasks, *([self._follower] if self._follower is not None else [])]
        for task in running:
            task.cancel()
        if running:
            # Bounded: a task that ignored its cancellation must not hold the shutdown forever.
            _, stuck = await asyncio.wait(running, timeout=STOP_GRACE)
            if stuck:
                log.warning("%s: %d tasks did not stop within %.0f s", self.name, len(stuck), STOP_GRACE)
