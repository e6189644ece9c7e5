"""`dlq replay`: dead letters back to the topic they came from, exactly once.

The sink's dead-letter topic is read with the replay's own consumer group (one per `--reason` filter, so
each filter keeps its own progress: `activity-connector.<sink>.replay[.<reasons>]`), up to the end it had
when the run started. Each record chosen is produced to its original topic (`__connect.errors.topic`) with
its original key, value and headers, the error headers removed and `__activity.replayed` counting replays;
the records produced and the group's offsets are committed in one Kafka transaction every CHUNK records,
so a run that is killed repeats nothing: the next run starts where the last commit left off, and what the
killed run produced after it was aborted (invisible to read_committed consumers, as sinks are).

Records not chosen (another reason, older than `--since`) are passed over by this filter's group. A record
already replayed `dead_letter.max_replays` times is skipped with a warning. `--dry-run` only counts.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from connector.config import Settings, SinkSettings
from connector.errors import ConfigError
from connector.errors import ReplayError as ReplayError
from connector.kafka import CLIENT_DEFAULTS, CONSUMER_ONLY, KAFKA_LOGGING, consumer_config
from connector.records import REASONS
from connector.units import parse_duration

log = logging.getLogger(__name__)

CHUNK = 500  # records per transaction
MAX_OPEN = 10.0  # seconds a transaction stays open at most (Kafka aborts it past transaction.timeout.ms)
STALL_TIMEOUT = 120.0  # seconds without a record from a partition not read to its end: the run fails
REPLAYED = "__activity.replayed"
_ERROR_PREFIXES = ("__connect.errors.", "__activity.error.")


@dataclass
class ReplayCounts:
    replayed: Counter[str] = field(default_factory=Counter)  # by reason
    skipped: Counter[str] = field(default_factory=Counter)  # why: filtered, too_old, max_replays, no_topic

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would be replayed" if dry_run else "replayed"
        out = [f"{reason}: {n} {verb}" for reason, n in sorted(self.replayed.items())]
        out += [f"skipped ({why}): {n}" for why, n in sorted(self.skipped.items())]
        out.append(f"total: {sum(self.replayed.values())} {verb}, {sum(self.skipped.values())} skipped")
        return out


def parse_since(value: str, now: float | None = None) -> float:
    """Epoch seconds from an RFC 3339 time or date, or a duration meaning that long ago (`2h`, `3d`)."""
    now = time.time() if now is None else now
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*", value):
        return now - parse_duration(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            "--since", f"not a time (2026-11-30T12:00:00Z) or a duration (6h): {value!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def find_sink(settings: Settings, name: str) -> SinkSettings:
    for sink in settings.sinks:
        if sink.name == name:
            return sink
    known = ", ".join(s.name for s in settings.sinks) or "none"
    raise ConfigError("--sink", f"no sink named {name!r} (sinks: {known})")


def replay(
    settings: Settings,
    sink: SinkSettings,
    reasons: Sequence[str] = (),
    since: float | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    say: Callable[[str], None] = print,
) -> ReplayCounts:
    unknown = [r for r in reasons if r not in REASONS]
    if unknown:
        raise ConfigError("--reason", f"unknown reason {unknown[0]!r} (one of {', '.join(REASONS)})")
    chosen = frozenset(reasons)
    group = f"activity-connector.{sink.name}.replay" + ("." + "+".join(sorted(chosen)) if chosen else "")
    kafka = settings.kafka
    consumer = Consumer(
        {
            **consumer_config(kafka, group, {}),
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    producer: Producer | None = None
    counts = ReplayCounts()
    try:
        if not dry_run:
            common = {k: v for k, v in kafka.items() if k not in CONSUMER_ONLY}
            producer = Producer(
                {
                    **CLIENT_DEFAULTS,
                    **common,
                    "transactional.id": f"activity-connector.{sink.name}.replay",
                    "linger.ms": 20,
                    **KAFKA_LOGGING,
                }
            )
            # Fences a killed run and aborts its open transaction first, so the offsets read next are the
            # committed ones (a pending transactional commit would make them unreadable).
            producer.init_transactions(60)
        # A dry run reads from the same group's position, and never commits.
        ends = _assign(consumer, sink.dead_letter_topic, since)
        if producer is not None:
            producer.begin_transaction()
        in_chunk = 0
        opened = time.monotonic()
        next_offsets: dict[int, int] = {}  # what the group commits: one past each record taken
        pending = {p for p, (position, end) in ends.items() if position < end}
        interval = 1.0 / rate if rate else 0.0
        next_at = time.monotonic()
        quiet_since = time.monotonic()
        while pending and (limit is None or sum(counts.replayed.values()) < limit):
            message = _next(consumer, pending, ends)
            if message is None:
                if time.monotonic() - quiet_since > STALL_TIMEOUT:
                    raise ReplayError(f"{sink.dead_letter_topic}: nothing read for {STALL_TIMEOUT:.0f} s")
                continue
            quiet_since = time.monotonic()
            next_offsets[message.partition()] = message.offset() + 1  # type: ignore[index,operator]
            why, reason, replays = _judge(message, chosen, since, sink.max_replays)
            if why is not None:
                counts.skipped[why] += 1
                if why == "max_replays":
                    log.warning(
                        "%s offset %s: replayed %d times already (dead_letter.max_replays); skipped",
                        sink.dead_letter_topic,
                        message.offset(),
                        replays,
                    )
            else:
                counts.replayed[reason] += 1
                if producer is not None:
                    if interval:
                        next_at = max(next_at, time.monotonic()) + interval
                        time.sleep(max(0.0, next_at - time.monotonic()))
                    _produce(producer, message, replays)
            in_chunk += 1
            # Commit every CHUNK records, and well within the transaction timeout when --rate is slow.
            if producer is not None and (in_chunk >= CHUNK or time.monotonic() - opened > MAX_OPEN):
                _commit(producer, consumer, sink.dead_letter_topic, next_offsets)
                producer.begin_transaction()
                in_chunk, opened = 0, time.monotonic()
        if producer is not None:
            _commit(producer, consumer, sink.dead_letter_topic, next_offsets)
    except KafkaException as exc:
        raise ReplayError(f"replay of {sink.dead_letter_topic}: Kafka: {exc.args[0].str()}") from None
    finally:
        consumer.close()
    for line in counts.lines(dry_run):
        say(line)
    return counts


def _assign(consumer: Consumer, topic: str, since: float | None) -> dict[int, tuple[int, int]]:
    """Assign every partition at the group's position (or `since`); (position, end) per partition."""
    metadata = consumer.list_topics(topic, timeout=30)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise ConfigError("--sink", f"its dead-letter topic {topic!r} does not exist")
    partitions = [TopicPartition(topic, p) for p in sorted(info.partitions)]
    committed = consumer.committed(partitions, timeout=30)
    starts: dict[int, int] = {}
    for tp in committed:
        if tp.error is not None:
            raise ReplayError(
                f"{topic} [{tp.partition}]: the replay's committed offset is unreadable: {tp.error}"
            )
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=30)
        starts[tp.partition] = tp.offset if tp.offset != OFFSET_INVALID and tp.offset >= 0 else low
    if since is not None:
        wanted = [TopicPartition(topic, p, int(since * 1000)) for p in starts]
        for tp in consumer.offsets_for_times(wanted, timeout=30):
            if tp.error is not None:
                raise ReplayError(f"{topic} [{tp.partition}]: no offset for --since: {tp.error}")
            if tp.offset >= 0:
                starts[tp.partition] = max(starts[tp.partition], tp.offset)
    ends = {}
    for p, start in starts.items():
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        ends[p] = (start, high)
    consumer.assign(
        [TopicPartition(topic, p, start if start >= 0 else OFFSET_BEGINNING) for p, start in starts.items()]
    )
    return ends


def _next(consumer: Consumer, pending: set[int], ends: dict[int, tuple[int, int]]) -> Message | None:
    message = consumer.poll(1.0)
    if message is None:
        return None
    error = message.error()
    partition: int = message.partition()  # type: ignore[assignment]
    if error is not None:
        if error.code() == KafkaError._PARTITION_EOF:
            pending.discard(partition)
            return None
        raise KafkaException(error)
    offset: int = message.offset()  # type: ignore[assignment]
    if partition not in pending or offset >= ends[partition][1]:
        # Written after the run started: the next run's. Not passed: the position goes back to it.
        tp = TopicPartition(message.topic() or "", partition, offset)
        consumer.seek(tp)
        consumer.pause([tp])
        pending.discard(partition)
        return None
    if offset + 1 >= ends[partition][1]:
        pending.discard(partition)
    return message


def _headers(message: Message) -> list[tuple[str, str | bytes | None]]:
    raw = message.headers() or []
    items = list(raw.items()) if isinstance(raw, dict) else list(raw)
    return [(k, v) for k, v in items]


def _judge(
    message: Message, chosen: frozenset[str], since: float | None, max_replays: int
) -> tuple[str | None, str, int]:
    """(why it is skipped or None, its reason, how many times it was replayed already)."""
    headers = dict(_headers(message))
    reason = _text(headers.get("__activity.error.reason")) or "unknown"
    try:
        replays = int(_text(headers.get(REPLAYED)) or 0)
    except ValueError:
        replays = 0
    if chosen and reason not in chosen:
        return "filtered", reason, replays
    if since is not None:
        _, stamp = message.timestamp()
        if stamp >= 0 and stamp < since * 1000:
            return "too_old", reason, replays
    if not _text(headers.get("__connect.errors.topic")):
        return "no_topic", reason, replays
    if replays >= max_replays:
        return "max_replays", reason, replays
    return None, reason, replays


def _produce(producer: Producer, message: Message, replays: int) -> None:
    headers = _headers(message)
    topic = _text(dict(headers)["__connect.errors.topic"])
    kept = [(k, v) for k, v in headers if not k.startswith(_ERROR_PREFIXES) and k != REPLAYED]
    kept.append((REPLAYED, str(replays + 1).encode()))
    for _ in range(10_000):
        try:
            producer.produce(topic, value=message.value(), key=message.key(), headers=kept)
            return
        except BufferError:
            producer.poll(0.05)
    raise ReplayError("the Kafka producer's queue stayed full")


def _commit(producer: Producer, consumer: Consumer, topic: str, next_offsets: dict[int, int]) -> None:
    # The offsets of records taken, not the consumer's position: a seek (end-of-run) clears that.
    offsets = [TopicPartition(topic, p, o) for p, o in sorted(next_offsets.items())]
    if offsets:
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(60)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
