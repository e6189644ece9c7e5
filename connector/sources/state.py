"""A source's cursor in a compacted Kafka topic, read back at start and written inside the window's
transaction, so the records of a window and the cursor moving past it become visible together or not at
all.

Keys: `<source>` holds the cursor's head (phase, next day, job in progress, how many `seen` chunks);
`<source>/seen/<i>` holds chunk i of the open day's produced uids (a day of uids does not fit one message).
A chunk no longer used is deleted with a tombstone in the same transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from connector.errors import StartupError
from connector.kafka import admin_config, consumer_config
from connector.sources.cursor import Cursor

log = logging.getLogger(__name__)

CHUNK_UIDS = 5_000  # uids per state message: well under Kafka's default 1 MB message limit
READ_TIMEOUT = 960.0  # seconds to read the state topic to its end: an open transaction may hold it 15 min


def ensure_topics(kafka: Mapping[str, Any], state_topic: str) -> None:
    """Create the state topic compacted if it does not exist (the others are the broker's to create)."""
    admin = AdminClient(admin_config(kafka))
    futures = admin.create_topics(
        # Small segments, so compaction can drop old cursors: the topic stays small and quick to read.
        [
            NewTopic(
                state_topic, num_partitions=1, config={"cleanup.policy": "compact", "segment.ms": "3600000"}
            )
        ],
        request_timeout=30,
    )
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StartupError(
                    f"cannot create the state topic {state_topic!r}: {exc.args[0].str()}"
                ) from None


def read_cursor(kafka: Mapping[str, Any], state_topic: str, name: str) -> tuple[Cursor | None, int]:
    """The source's committed cursor (None on a first run) and how many seen chunks it has. Blocking."""
    consumer = Consumer(
        {
            **consumer_config(kafka, f"activity-connector.{name}.state-reader", {}),
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    latest: dict[str, bytes | None] = {}
    try:
        metadata = consumer.list_topics(state_topic, timeout=30)
        topic = metadata.topics.get(state_topic)
        if topic is None or topic.error is not None:
            raise StartupError(
                f"cannot read the state topic {state_topic!r}: {topic.error if topic else 'absent'}"
            )
        ends = {}
        for p in topic.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(state_topic, p), timeout=30)
            ends[p] = high
        pending = {p for p, high in ends.items() if high > 0}
        consumer.assign([TopicPartition(state_topic, p, OFFSET_BEGINNING) for p in pending])
        prefix = f"{name}/seen/"
        # read_committed stops at the first open transaction (another source's, sharing the topic): read on
        # until the position passes the end seen at the start, which that transaction's end allows.
        deadline = time.monotonic() + READ_TIMEOUT
        while pending:
            if time.monotonic() > deadline:
                raise StartupError(f"could not read the state topic {state_topic!r} to its end")
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise StartupError(f"reading the state topic: {error.str()}")
                if error is None:
                    key = (message.key() or b"").decode(errors="replace")
                    if key == name or key.startswith(prefix):
                        latest[key] = message.value()
            positions = consumer.position([TopicPartition(state_topic, p) for p in pending])
            pending = {tp.partition for tp in positions if tp.offset < ends[tp.partition]}
    finally:
        consumer.close()
    head = latest.get(name)
    if head is None:
        return None, 0
    data = orjson.loads(head)
    count = int(data.get("seen_chunks", 0))
    chunks = []
    for i in range(count):
        value = latest.get(f"{name}/seen/{i}")
        if value is None:
            raise StartupError(f"the state of {name!r} misses seen chunk {i} in {state_topic!r}")
        chunks.append(orjson.loads(value))
    return Cursor.from_state(data, chunks), count


def write_cursor(
    producer: Producer, state_topic: str, name: str, cursor: Cursor, old_chunks: int, head_only: bool = False
) -> int:
    """Produce the cursor (inside the caller's transaction); returns how many seen chunks it now has."""

    def produce(key: str, value: bytes | None) -> None:
        for _ in range(6000):
            try:
                producer.produce(state_topic, key=key, value=value)
                return
            except BufferError:  # the queue is full of the window's records: let the broker take some
                producer.poll(0.01)
        raise BufferError("the Kafka producer's queue stayed full")

    if head_only:
        produce(name, orjson.dumps(cursor.head(old_chunks)))
        return old_chunks
    chunks = cursor.seen_chunks(CHUNK_UIDS)
    for i, chunk in enumerate(chunks):
        produce(f"{name}/seen/{i}", orjson.dumps(chunk))
    for i in range(len(chunks), old_chunks):
        produce(f"{name}/seen/{i}", None)
    produce(name, orjson.dumps(cursor.head(len(chunks))))
    return len(chunks)
