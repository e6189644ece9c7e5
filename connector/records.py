"""The record as it travels through a sink: the Kafka message plus what decoding made of it."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message


class Record:
    """One consumed Kafka record. `payload` is the decoded value; `size` the bytes it counts for in batches.

    The original message is kept whole so a dead letter carries its exact key, value, headers and timestamp.
    """

    __slots__ = ("epoch", "key", "message", "offset", "partition", "payload", "size", "topic")

    def __init__(self, message: Message, epoch: int) -> None:
        self.message = message
        # Consumed messages always carry these; the stubs allow None for produced ones.
        self.topic: str = message.topic()  # type: ignore[assignment]
        self.partition: int = message.partition()  # type: ignore[assignment]
        self.offset: int = message.offset()  # type: ignore[assignment]
        self.key: bytes | None = message.key()
        self.epoch = epoch
        value = message.value()
        self.size = len(value) if value is not None else 0
        self.payload: dict[str, Any] = {}

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
