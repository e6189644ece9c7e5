"""The record as it travels through a sink: the Kafka message plus what decoding made of it."""

from __future__ import annotations

from typing import Any, Literal, get_args

from confluent_kafka import Message

# Why a record was not delivered: its dead letter's `__activity.error.reason`, and the `reason` label.
Reason = Literal[
    "decode_error", "invalid_record", "record_too_large", "rejected", "retries_exhausted", "import_failed"
]
REASONS: tuple[Reason, ...] = get_args(Reason)


class Record:
    """One consumed Kafka record. `payload` is the decoded value; `size` the bytes it counts for in batches.

    The original message is kept whole so a dead letter carries its exact key, value, headers and timestamp.
    """

    __slots__ = ("epoch", "message", "offset", "partition", "payload", "size", "topic")

    def __init__(
        self, message: Message, topic: str, partition: int, offset: int, epoch: int, size: int
    ) -> None:
        # The caller has already read these from the message once; C calls are not free per record.
        self.message = message
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.epoch = epoch
        self.size = size
        self.payload: dict[str, Any] = {}

    @classmethod
    def of(cls, message: Message, epoch: int = 1) -> Record:
        """A record from a message, reading every field from it (tests and tools)."""
        value = message.value()
        return cls(
            message,
            message.topic() or "",
            message.partition() or 0,
            message.offset() or 0,
            epoch,
            len(value) if value is not None else 0,
        )

    @property
    def key(self) -> bytes | None:
        k: bytes | None = self.message.key()
        return k

    @property
    def value(self) -> bytes | None:
        v: bytes | None = self.message.value()
        return v

    @property
    def timestamp_ms(self) -> int:
        ts: int = self.message.timestamp()[1]
        return ts

    def __repr__(self) -> str:
        return f"Record({self.topic}[{self.partition}]@{self.offset})"
