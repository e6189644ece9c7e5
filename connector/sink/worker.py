"""The Kafka side of a sink (as Kafka Connect's WorkerSinkTask): consume, pause/resume, commit, rebalance.

It runs on the asyncio loop: `consume()` is called with a zero timeout so it never blocks the loop, and
every call back from librdkafka (rebalance, commit, statistics, errors) happens inside consume() on this
same thread. Records go to the task (`put`); the task settles them in the shared OffsetTracker, and the
worker commits a partition's settled watermark as soon as it moves: asynchronously, one commit in flight
at a time, at most every COMMIT_MIN_INTERVAL, so a crash repeats little more than what was in flight.

Kafka's health is followed: the `kafka_connected` gauge and readiness turn 0/not ready when librdkafka
reports every broker down, and back when a broker is up again (statistics, a commit, a record).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from connector.errors import FatalError
from connector.logs import KAFKA_LOGGER, current_sink
from connector.metrics import SinkMetrics
from connector.sink.backpressure import Backpressure
from connector.sink.offsets import OffsetTracker
from connector.sink.settle import DeadLetters
from connector.sink.task import SinkTask

log = logging.getLogger(__name__)
kafka_log = logging.getLogger(KAFKA_LOGGER)  # repeated identical lines collapsed (connector.logs)

CONSUME_MAX = 500  # messages handed over per consume() call
IDLE_SLEEP = 0.01  # seconds to yield when Kafka had nothing for us
# A full buffer (or records waiting for a writer schema) stops intake: no more messages are taken, and the
# partitions pause only if that goes on this long. Under full load the buffer touches its bound and drains
# again in a fraction of a second; a pause each time purged librdkafka's prefetched messages, which were
# then fetched again (it cost ~30% of the throughput, and a pause at start for a schema ~15%). Memory stays
# bounded meanwhile: librdkafka's own queue is bounded (kafka.fetch_bounds). Not consuming for long would
# delay rebalance callbacks, hence the pause when the stop lasts (an outage, a registry down).
HOLD_BEFORE_PAUSE = 2.0
COMMIT_MIN_INTERVAL = 0.05  # seconds between commits: coalesces the watermark's many small moves
# librdkafka calls that block (admin requests, synchronous commits, flush, close), off the shared loop and
# apart from asyncio's default executor (aiohttp's DNS lookups use that one).
KAFKA_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kafka")
COMMIT_THREAD_WAIT = 120.0  # seconds a stopping sink waits for a commit in a thread (librdkafka times out)
STALE_STATS = 3.0  # seconds: statistics saying "down" this soon after Kafka answered are not believed
COMMIT_STUCK = 15.0  # a commit with no callback after this long is taken as failed
GAUGE_INTERVAL = 1.0
RESHARE_RETRY = 5.0  # seconds before the partition counts are asked for again after a failure...
RESHARE_MAX_RETRY = 60.0  # ...doubling up to this
# librdkafka errors that mean no broker can be reached right now.
# (One broker's connection failing, _TRANSPORT, is not enough: others may still serve.)
_DISCONNECTED = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION, KafkaError._SSL})
# Kafka refuses what the sink must do: it cannot go on (it restarts with its backoff: an ACL may be added).
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "Read on its topics and Write on its dead-letter topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "Read on its consumer group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "Write on its dead-letter topic (IdempotentWrite on the cluster "
    "for brokers before 2.8)",
}


def denied(error: KafkaError, name: str) -> FatalError | None:
    """A sink's error when Kafka refuses it an operation: which ACL it needs, named."""
    needed = _DENIED.get(error.code())
    if needed is None:
        return None
    return FatalError(
        f"{name}: Kafka refused: {error.str()}; the sink needs {needed} (see the ACLs in operations.md)"
    )


def subscribed_partitions(
    subscription: list[str], owned: list[tuple[str, int]], counts: dict[str, int | None]
) -> int | None:
    """How many partitions the topics a sink reads have: its named topics, the topics its patterns
    (`^...`) match, and those it owns partitions of. `counts` is each topic's partition count from the
    cluster's metadata, None for a topic whose metadata came with an error: then the answer is None (not
    known yet). A named topic the cluster does not have counts 0."""
    patterns = [re.compile(s) for s in subscription if s.startswith("^")]
    topics = {s for s in subscription if not s.startswith("^")} | {topic for topic, _ in owned}
    topics |= {name for name in counts if any(p.search(name) for p in patterns)}
    mine = {topic for topic, _ in owned}
    total = 0
    for topic in topics:
        n = counts.get(topic, None if topic in mine else 0)
        if n is None:
            return None
        total += n
    return total


class SinkWorker:
    def __init__(
        self,
        name: str,
        subscription: list[str],
        consumer: Consumer,  # a real one, or a fake in unit tests
        task: SinkTask,
        dead_letters: DeadLetters,
        backpressure: Backpressure,
        metrics: SinkMetrics,
        *,
        shutdown_timeout: float = 30.0,
        on_close: Callable[[], Awaitable[None]] | None = None,
        preflight: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.subscription = subscription
        self.consumer = consumer
        self.task = task
        self.offsets: OffsetTracker = task.offsets
        self.dead_letters = dead_letters
        self.backpressure = backpressure
        self.m = metrics
        self.shutdown_timeout = shutdown_timeout
        self._on_close = on_close
        self._preflight = preflight
        self._seen_up = -STALE_STATS  # when Kafka last answered (a message, a commit)
        self.kafka_problem: str | None = None  # why Kafka cannot be reached (authentication, TLS)
        self._clock = clock
        self.heartbeat = clock()
        self.assigned = False
        self.connected = True  # until librdkafka says otherwise
        self._fatal: BaseException | None = None
        self._paused: set[tuple[str, int]] = set()
        self._stopped_since: float | None = None  # when intake stopped (buffer full, or a schema awaited)
        self._reshare_due = False  # a rebalance changed the partitions: recompute the budget share
        self._reshare_at = 0.0  # when the share may be computed again (the metadata could not be read)
        self._reshare_failures = 0  # lookups failed in a row: each waits longer before the next
        self._resume_due: set[tuple[str, int]] = set()  # assigned since: resumed unless intake is stopped
        self._commit_started: float | None = None  # when the commit in flight was started
        self._thread_commit: asyncio.Future[list[TopicPartition]] | None = None  # made while holding
        self._last_commit = 0.0
        self._closing = False
        metrics.kafka_connected.set(1)

    @property
    def fatal(self) -> BaseException | None:
        return self._fatal or self.task.fatal

    def ready(self) -> bool:
        return self.assigned and self.connected

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set or a fatal error; then flush, settle, commit and close."""
        current_sink.set(self.name)  # every log line of this sink's task and the tasks it starts
        next_gauges = self._clock()
        try:
            if self._preflight is not None and not await self._run_preflight(stop):
                return  # stopped meanwhile
            self.consumer.subscribe(
                self.subscription, on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost
            )
            while not stop.is_set() and self.fatal is None:
                messages = self.consumer.consume(CONSUME_MAX, 0) if self._may_consume() else []
                now = self.heartbeat = self._clock()
                if messages:
                    self._connected(True)
                if messages or self.task.input_held():
                    for error in self.task.put(messages, now):
                        self._consumer_error(error)
                if self._reshare_due:
                    self._reshare(now)
                self.task.tick(now)
                self._apply_backpressure()
                self.commit(now)
                self.task.service.rate_limiter.account_stall()  # counted as it grows
                if now >= next_gauges:
                    self._update_gauges()
                    next_gauges = now + GAUGE_INTERVAL
                await asyncio.sleep(0 if messages else IDLE_SLEEP)
        finally:
            await self._shutdown()
        if self.fatal is not None:
            raise self.fatal

    async def _run_preflight(self, stop: asyncio.Event) -> bool:
        """The checks before the first record (the dead-letter topic exists), in a thread: the loop turns
        (heartbeat) and a stop is heeded meanwhile. False when stopped before they ended."""
        assert self._preflight is not None
        checks = asyncio.get_running_loop().run_in_executor(KAFKA_THREADS, self._preflight)
        while True:
            done, _ = await asyncio.wait({checks}, timeout=0.5)
            self.heartbeat = self._clock()
            if done:
                checks.result()  # raises what the checks raised (a StartupError naming the key)
                return not stop.is_set()
            if stop.is_set():
                return False  # the thread ends by its own timeouts; its answer is no longer needed

    def _consumer_error(self, message: Message) -> None:
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            log.warning("%s: consumer error: %s", self.name, error)
            refused = denied(error, self.name)
            if refused is not None and self._fatal is None:
                self._fatal = refused
            elif error.fatal():
                self._fatal = KafkaException(error)

    # --- committing ----------------------------------------------------------------------------------------

    def commit(self, now: float, sync: bool = False) -> None:
        """Commit the settled watermarks that moved; async commits are coalesced, one in flight.

        `sync` (shutdown): every point the broker has not acknowledged, whatever is in flight.
        """
        if sync:
            points = self.offsets.unacknowledged()
        elif self._holding():
            self._commit_in_thread(now)
            return
        else:
            started = self._commit_started
            if started is not None:
                if now - started < COMMIT_STUCK:
                    return
                # No answer to the last commit: offer every point not acknowledged again.
                log.warning(
                    "%s: no answer to a commit after %.0f s; committing again", self.name, COMMIT_STUCK
                )
                self._commit_started = None
                points = self.offsets.unacknowledged()
            elif now - self._last_commit < COMMIT_MIN_INTERVAL:
                return
            else:
                points = self.offsets.to_commit()
        if not points:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in points.items()]
        self._last_commit = now
        try:
            if sync:
                answered = self.consumer.commit(offsets=offsets, asynchronous=False) or offsets
                for tp in answered:
                    if tp.error is None:
                        self.offsets.commit_done((tp.topic, tp.partition), tp.offset)
                self.m.commit("success" if all(tp.error is None for tp in answered) else "failed")
            else:
                self._commit_started = now
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._commit_started = None
            self.m.commit("failed")
            log.warning("%s: commit failed: %s", self.name, exc)
            for tp in offsets:
                self.offsets.commit_failed((tp.topic, tp.partition), tp.offset)

    def _close_consumer(self) -> None:
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("%s: closing the consumer: %s", self.name, exc)

    def _commit_in_thread(self, now: float) -> None:
        """While intake holds, consume() is not called, and librdkafka hands over the answers of
        asynchronous commits only inside it: the commit in flight stayed unanswered for the whole hold
        (up to HOLD_BEFORE_PAUSE), nothing newer was committed, and a crash then repeated all that had
        settled meanwhile. So a commit is made synchronously in a thread, one at a time."""
        if self._thread_commit is not None or now - self._last_commit < COMMIT_MIN_INTERVAL:
            return
        points = self.offsets.to_commit()
        if not points:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in points.items()]
        self._last_commit = now
        consumer = self.consumer

        def commit() -> list[TopicPartition]:
            return consumer.commit(offsets=offsets, asynchronous=False) or offsets

        done = self._thread_commit = asyncio.get_running_loop().run_in_executor(KAFKA_THREADS, commit)
        done.add_done_callback(lambda future: self._committed_in_thread(future, offsets))

    def _committed_in_thread(
        self, future: asyncio.Future[list[TopicPartition]], offsets: list[TopicPartition]
    ) -> None:
        self._thread_commit = None
        try:
            answered = future.result()
        except (KafkaException, RuntimeError) as exc:
            self.m.commit("failed")
            log.warning("%s: commit failed: %s", self.name, exc)
            for tp in offsets:
                self.offsets.commit_failed((tp.topic, tp.partition), tp.offset)
            return
        for tp in answered:
            if tp.error is None:
                self.offsets.commit_done((tp.topic, tp.partition), tp.offset)
            else:
                self.offsets.commit_failed((tp.topic, tp.partition), tp.offset)
        self.m.commit("success" if all(tp.error is None for tp in answered) else "failed")

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if self._closing:
            return  # the commits of close() itself: counted there
        self._commit_started = None
        self.m.commit("failed" if error is not None else "success")
        if error is not None:
            # Typically ILLEGAL_GENERATION during a rebalance: commit these points again next time.
            log.warning("%s: commit failed: %s", self.name, error)
            for tp in partitions:
                self.offsets.commit_failed((tp.topic, tp.partition), tp.offset)
            return
        self._connected(True)
        for tp in partitions:
            if tp.error is None:
                self.offsets.commit_done((tp.topic, tp.partition), tp.offset)
            else:
                self.offsets.commit_failed((tp.topic, tp.partition), tp.offset)

    # --- rebalance (librdkafka callbacks, inside consume() on this thread) ---------------------------------

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self.offsets.assign((p.topic, p.partition))
        # A partition paused by us stays paused through a revoke and a new assignment (librdkafka keeps
        # the application's pause): resumed from the loop unless intake is stopped (no client calls here).
        self._resume_due |= {(p.topic, p.partition) for p in partitions}
        self.assigned = True
        log.info("%s: assigned %s", self.name, [f"{p.topic}[{p.partition}]" for p in partitions])
        self._reshare_due = True

    def on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._close_partitions(partitions, commit=True)

    def on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._close_partitions(partitions, commit=False)

    def _close_partitions(self, partitions: list[TopicPartition], commit: bool) -> None:
        """Commit what is settled, drop what is buffered for these partitions, forget their lag."""
        gone = {(p.topic, p.partition) for p in partitions}
        self.task.close_partitions(gone)
        points = [(tp, self.offsets.revoke(tp)) for tp in gone]
        self._paused -= gone
        self._resume_due -= gone
        self.m.paused.set(len(self._paused))
        for topic, partition in gone:
            self.m.forget_lag(topic, partition)
        to_commit = [TopicPartition(t, p, o) for (t, p), o in points if o is not None]
        if commit and to_commit and not self._closing:  # close() follows a final commit
            try:
                self.consumer.commit(offsets=to_commit, asynchronous=False)
            except KafkaException as exc:
                log.warning("%s: commit on revoke failed: %s", self.name, exc)
        log.info("%s: %s %s", self.name, "revoked" if commit else "lost", sorted(gone))
        self._reshare_due = True

    def _reshare(self, now: float) -> None:
        """This sink's part of the API's rate-limit budget: the partitions it owns of all the partitions of
        the topics it reads, so replicas of the group split the budget without talking to each other.
        Called from the loop after a rebalance, never from a rebalance callback (the client may not be
        called back into from one); asked again RESHARE_RETRY later while the metadata cannot be read."""
        if now < self._reshare_at or not self.connected:
            return  # a lookup now would block the loop for its whole timeout
        try:
            metadata = self.consumer.list_topics(timeout=2)
            counts: dict[str, int | None] | None = {
                name: None if t.error is not None else len(t.partitions)
                for name, t in metadata.topics.items()
            }
        except (KafkaException, AttributeError):
            counts = None
        mine = self.offsets.assigned()
        total = None if counts is None else subscribed_partitions(self.subscription, mine, counts)
        if total is None:
            # The share stays as it was meanwhile.
            delay = min(RESHARE_RETRY * 2 ** min(self._reshare_failures, 8), RESHARE_MAX_RETRY)
            self._reshare_failures += 1
            self._reshare_at = now + delay
            return
        self._reshare_due = False
        self._reshare_failures = 0
        self.task.service.rate_limiter.set_partitions(self.name, len(mine), total)
        log.info(
            "%s: %d of %d partitions: %.0f%% of the API's rate-limit budget for this sink's partitions",
            self.name,
            len(mine),
            total,
            100 * len(mine) / total if total else 0,
        )

    # --- Kafka's health ------------------------------------------------------------------------------------

    def on_stats(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        brokers = stats.get("brokers", {}).values()
        up = any(b.get("state") == "UP" for b in brokers)
        # Statistics are made on librdkafka's thread and may be served late: a "down" older than a
        # message or a commit answer just seen is stale (it flipped readiness back after a broker's return).
        if up or self._clock() - self._seen_up > STALE_STATS:
            self._connected(up)
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                if pid == "-1" or self.offsets.state((topic, int(pid))) is None:
                    continue
                lag = p.get("consumer_lag", -1)
                if lag < 0 and p.get("committed_offset", -1) < 0 and p.get("hi_offset", -1) >= 0:
                    # Nothing committed yet (a new group): everything still in the log is waiting.
                    lag = p["hi_offset"] - max(p.get("lo_offset", 0), 0)
                if lag >= 0:
                    self.m.lag(topic, int(pid), lag)

    def on_kafka_error(self, error: KafkaError) -> None:
        if error.code() in _DISCONNECTED:
            self._connected(False)
            if error.code() != KafkaError._ALL_BROKERS_DOWN:
                self.kafka_problem = error.str()  # authentication, TLS: shown in /status
        kafka_log.warning("%s: kafka: %s", self.name, error)
        refused = denied(error, self.name)
        if refused is not None and self._fatal is None:
            self._fatal = refused
        elif error.fatal() and self._fatal is None:
            self._fatal = KafkaException(error)

    def _connected(self, up: bool) -> None:
        if up:
            self._seen_up = self._clock()
            self.kafka_problem = None
        if up != self.connected:
            self.connected = up
            self.m.kafka_connected.set(1 if up else 0)
            state = "reachable again" if up else "unreachable"
            log.log(logging.INFO if up else logging.WARNING, "%s: Kafka %s", self.name, state)

    # --- backpressure, gauges, shutdown --------------------------------------------------------------------

    def _holding(self) -> bool:
        """Intake stopped a moment ago: take no more messages (if it lasts, the partitions pause)."""
        since = self._stopped_since
        return since is not None and self._clock() - since < HOLD_BEFORE_PAUSE

    def _may_consume(self) -> bool:
        """Whether to call consume(): always, unless intake stopped a moment ago. Once the stop has lasted
        HOLD_BEFORE_PAUSE, the partitions are paused first, so consume() serves callbacks and takes
        nothing (consuming first would take what librdkafka prefetched past the full buffer)."""
        if self._stopped_since is None:
            return True
        if self._holding():
            return False
        self._pause_assigned()
        return True

    def _apply_backpressure(self) -> None:
        """Stop intake while the buffer or the followed imports are at their bound, while the API holds
        requests back with every lane stocked, or while records wait for a writer schema; pause the
        partitions once that has lasted HOLD_BEFORE_PAUSE; resume when it ends."""
        bp = self.backpressure
        records, nbytes = self.task.sending()
        following = self.task.following()[1]
        held = self.task.service.rate_limiter.held()
        if nbytes + records * bp.record_cost >= bp.max_bytes:  # counted as the bound counts
            self.task.send_open_batches(bp.max_bytes * 3 // 4, bp.record_cost)  # they fill most of it
        bp.update(records, nbytes, held, following)
        # Records waiting for a writer schema stop intake only while they wait (a fetch is quick).
        stopped = bp.paused or self.task.input_held()
        now = self._clock()
        if stopped and self._stopped_since is None:
            self._stopped_since = now
            log.debug(
                "%s: intake stopped (%d bytes buffered, %d in followed imports, held back: %s)",
                self.name,
                nbytes,
                following,
                held,
            )
        elif not stopped and self._stopped_since is not None:
            self._stopped_since = None
            if self._paused:
                self.consumer.resume([TopicPartition(t, p) for t, p in self._paused])
                self._paused.clear()
                self.m.paused.set(0)
                log.info("%s: resuming partitions", self.name)
        if stopped:
            if not self._holding():
                self._pause_assigned()  # also partitions assigned while paused
        elif self._resume_due:
            self.consumer.resume([TopicPartition(t, p) for t, p in self._resume_due])
            self._resume_due.clear()

    def _pause_assigned(self) -> None:
        """Pause every assigned partition not paused yet."""
        newly = set(self.offsets.partitions()) - self._paused
        if not newly:
            return
        if not self._paused:
            records, nbytes = self.task.buffered()
            log.info("%s: pausing partitions (%d records, %d bytes held)", self.name, records, nbytes)
        self.consumer.pause([TopicPartition(t, p) for t, p in newly])
        self._paused |= newly
        self._resume_due -= newly
        self.m.paused.set(len(self._paused))

    def _update_gauges(self) -> None:
        records, nbytes = self.task.buffered()
        self.m.buffered_records.set(records)
        self.m.buffered_bytes.set(nbytes)

    async def _shutdown(self) -> None:
        """Flush, commit and close. librdkafka's blocking calls run in KAFKA_THREADS: the loop is shared
        with the other sinks and sources and the health server (a sink stopping after a fatal error
        while its dead-letter topic did not answer froze them all for shutdown_timeout)."""
        deadline = self._clock() + self.shutdown_timeout
        await self.task.stop(deadline, self._clock)
        self.task.service.rate_limiter.set_partitions(self.name, 0, 0)  # its budget share is others'
        loop = asyncio.get_running_loop()
        if self._thread_commit is not None:
            # A synchronous commit ends by librdkafka's own request timeout. Closing the client under it
            # is not safe, and a restart must not join the group while this member lives: wait for it.
            await asyncio.wait([self._thread_commit], timeout=COMMIT_THREAD_WAIT)
            if self._thread_commit is not None:
                log.warning("%s: a commit did not end in %.0f s; not closing", self.name, COMMIT_THREAD_WAIT)
                self._update_gauges()
                if self._on_close is not None:
                    await self._on_close()
                return
        await loop.run_in_executor(KAFKA_THREADS, self.dead_letters.flush, max(1.0, deadline - self._clock()))
        await loop.run_in_executor(KAFKA_THREADS, lambda: self.commit(self._clock(), sync=True))
        self._update_gauges()
        self._closing = True
        await loop.run_in_executor(KAFKA_THREADS, self._close_consumer)
        self._paused.clear()
        self.m.paused.set(0)  # closed: it holds no partition, paused or not
        if self._on_close is not None:
            await self._on_close()
        log.info("%s: stopped", self.name)
