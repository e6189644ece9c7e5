"""What a destination is: how to build a request from a batch and how to read the answer.

A destination module knows only its API. Status codes every API shares (401/403 fatal, 408/425/429/5xx
retried) are decided once in `connector.delivery.retry`; a destination reads its 2xx bodies into
per-record outcomes and says what a 4xx refusal means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from connector.records import Record


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request made from a batch. `context` is the destination's own note for reading the answer."""

    method: str
    path: str
    content: bytes
    content_type: str = "application/json"
    context: Any = None


@dataclass(frozen=True, slots=True)
class Success:
    """The API took the batch, except `rejected` (batch index → the API's message): a partial success."""

    rejected: Mapping[int, str] = field(default_factory=dict)
    import_id: str | None = None


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Send the same records again, not before `after` seconds when the API said so."""

    reason: str  # the `reason` label of retries_total: a status code, `timeout`, `connection`, ...
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Split:
    """The request was refused whole because of some record in it: resend halves to isolate it."""

    message: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The request was refused whole and resending cannot help: every record is dead-lettered."""

    message: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Nothing can be delivered (the API refuses our credentials): stop the sink, commit nothing past it."""

    message: str


# What a destination makes of an answer it reads.
Reading = Success | RetryAfter | Split | GiveUp
# The send stack's typed retry decision for one answer (or for no answer at all).
Decision = Success | RetryAfter | Split | GiveUp | Stop


class Destination(Protocol):
    """One bulk API. `type` is its name in the configuration; `max_records` its documented batch cap."""

    type: str
    max_records: int
    schema_file: str

    def check(self, payload: dict[str, Any]) -> str | None:
        """A rule the schema cannot say (e.g. a timestamp's zone); the problem in words, or None."""
        ...

    def build(self, batch: Sequence[Record]) -> Request:
        """The request carrying this batch."""
        ...

    def read_success(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        """Per-record outcomes of a 2xx answer; an answer of an unknown shape is RetryAfter, never Success."""
        ...

    def read_refusal(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        """What a 4xx other than 401/403/408/425/429 means for this batch."""
        ...
