"""Writing failed records to the dead-letter topic with their original key, value, headers and timestamp.

The producer is idempotent with acks=all. A record counts as settled only when the broker has acknowledged
its dead letter (the callback below), so no offset is committed past a record whose dead letter could
still be lost. Headers follow Kafka Connect's names, so existing tooling reads them, plus our own context.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connector.metrics import SinkMetrics
from connector.outcomes import Failure
from connector.records import Reason, Record
from connector.redact import cut, mask

log = logging.getLogger(__name__)

STAGES = {
    "decode_error": "VALUE_CONVERTER",
    "invalid_record": "TRANSFORMATION",
    "record_too_large": "TRANSFORMATION",
}
EXCEPTION_CLASSES: dict[Reason, str] = {
    "decode_error": "connector.codec.DecodeError",
    "invalid_record": "connector.InvalidRecord",
    "record_too_large": "connector.RecordTooLarge",
    "rejected": "connector.RejectedByDestination",
    "retries_exhausted": "connector.RetriesExhausted",
    "import_failed": "connector.ImportFailed",
}
_OTHER = "connector.DeliveryFailed"  # never used by a known reason; a header is never worth a crash
_OUR_PREFIXES = ("__connect.errors.", "__activity.error.")


def dead_letter_headers(
    record: Record, failure: Failure, sink: str, destination: str
) -> list[tuple[str, str | bytes | None]]:
    """The original headers (minus error headers of an earlier failure) plus this failure's context."""
    raw = record.message.headers() or []
    original = list(raw.items()) if isinstance(raw, dict) else raw
    headers = [(k, v) for k, v in original if not k.startswith(_OUR_PREFIXES)]
    headers += [
        ("__connect.errors.topic", record.topic.encode()),
        ("__connect.errors.partition", str(record.partition).encode()),
        ("__connect.errors.offset", str(record.offset).encode()),
        ("__connect.errors.connector.name", sink.encode()),
        ("__connect.errors.stage", STAGES.get(failure.reason, "TASK_PUT").encode()),
        ("__connect.errors.exception.class.name", EXCEPTION_CLASSES.get(failure.reason, _OTHER).encode()),
        # Masked again as written: the last gate before a message or a body leaves the process.
        ("__connect.errors.exception.message", cut(mask(failure.message.encode()), 1024)),
        ("__activity.error.reason", failure.reason.encode()),
        ("__activity.error.attempts", str(failure.attempts).encode()),
        ("__activity.error.destination", destination.encode()),
    ]
    if failure.http_status is not None:
        headers.append(("__activity.error.http_status", str(failure.http_status).encode()))
        headers.append(("__activity.error.http_body", cut(mask(failure.http_body), 1024)))
    if failure.import_id is not None:
        headers.append(("__activity.error.import_id", failure.import_id.encode()))
    return headers


class DeadLetterWriter:
    """Produces dead letters; `on_written(record, failure, ok, why)` runs from `poll()` once the broker
    answered.

    It never blocks the event loop: when librdkafka's local queue is full, dead letters wait here and go
    on a later `poll()`. What it holds until the broker acknowledges (`held()`) counts towards the sink's
    memory bound, so a dead-letter topic that cannot be written pauses intake instead of filling memory.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        sink: str,
        destination: str,
        metrics: SinkMetrics,
        on_written: Callable[[Record, Failure, bool, str], None],
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._sink = sink
        self._destination = destination
        self._m = metrics
        self._on_written = on_written
        self._waiting: deque[tuple[Record, Failure]] = deque()  # not yet handed to librdkafka
        self._unacked = 0  # handed over, no answer from the broker yet
        self._held_bytes = 0  # bytes of both; changed only where a dead letter comes and goes

    @property
    def pending(self) -> int:
        return len(self._waiting) + self._unacked

    def held(self) -> tuple[int, int]:
        """(records, bytes) of dead letters not yet acknowledged by the broker."""
        return self.pending, self._held_bytes

    def write(self, record: Record, failure: Failure) -> None:
        self._waiting.append((record, failure))
        self._held_bytes += record.size
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting:
            record, failure = self._waiting[0]
            try:
                self._producer.produce(
                    self.topic,
                    value=record.value,
                    key=record.key,
                    headers=dead_letter_headers(record, failure, self._sink, self._destination),
                    timestamp=record.timestamp_ms if record.timestamp_ms > 0 else 0,
                    on_delivery=self._callback(record, failure),
                )
            except BufferError:
                return  # librdkafka's queue is full: the rest go on a later poll()
            except KafkaException as exc:
                # Refused at once (a dead letter above the producer's message.max.bytes): a failed write,
                # as if the broker had refused it. It stops the sink; nothing past it is committed.
                self._waiting.popleft()
                self._held_bytes -= record.size
                log.error("dead letter for %r not written: %s", record, exc.args[0] if exc.args else exc)
                self._on_written(record, failure, False, str(exc.args[0] if exc.args else exc))
                continue
            self._waiting.popleft()
            self._unacked += 1

    def _callback(self, record: Record, failure: Failure) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, _: Message) -> None:
            self._unacked -= 1
            self._held_bytes -= record.size
            if err is not None:
                log.error("dead letter for %r not written: %s", record, err)
            else:
                self._m.dead_lettered(failure.reason)
            self._on_written(record, failure, err is None, "" if err is None else str(err))

        return delivered

    def poll(self) -> None:
        self._producer.poll(0)
        self._hand_over()

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` for every dead letter to be acknowledged; returns how many are not."""
        deadline = time.monotonic() + timeout
        while True:
            self._hand_over()
            left = deadline - time.monotonic()
            if left <= 0 or (self._producer.flush(min(left, 0.5)) == 0 and not self._waiting):
                return self.pending
