"""What a destination is: how to build a request from a batch and how to read the answer.

A destination module knows only its API. Status codes every API shares (401/403 fatal, 408/425/429/5xx
retried) are decided once in `connector.delivery.retry`; a destination reads its 2xx bodies into
per-record outcomes and says what a 4xx refusal means. APIs that import asynchronously also say how to
follow an import to its end (`track`, `read_status`); APIs that need something created before the first
batch say how (`setup`, `read_setup`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.errors import ConfigError
from connector.records import Record


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request made from a batch. `context` is the destination's own note for reading the answer,
    of a type the destination defines; typed `object`, so a reader narrows it before use (an `Any` let a
    reader take any note for its own)."""

    method: str
    path: str
    content: bytes
    content_type: str = "application/json"
    context: object = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Success:
    """The API took the batch, except `rejected` (batch index → the API's message), dead-lettered, and
    `retry` (batch indices that failed for a passing reason), sent again alone: a partial success."""

    rejected: Mapping[int, str] = field(default_factory=dict)
    import_id: str | None = None
    retry: tuple[int, ...] = ()


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


@dataclass(frozen=True, slots=True)
class Pending:
    """The import is still running: ask again later."""


@dataclass(frozen=True, slots=True)
class Done:
    """The import ended; `failed` maps batch indices to why they failed."""

    failed: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FollowUp:
    """Another request is needed to learn the outcome (e.g. an error file); read it with read_status too."""

    request: Request


StatusReading = Pending | Done | FollowUp

log = logging.getLogger(__name__)


def unreadable(destination: str, message: str) -> RetryAfter:
    """An answer of a shape we do not know: logged, and the batch retried, never counted as delivered."""
    log.warning("%s: %s; retrying the batch", destination, message)
    return RetryAfter("unreadable_answer")


_warned: set[tuple[str, str]] = set()


def _uncounted(what: str) -> None:
    return None


def parse_ack(options: Mapping[str, Any]) -> bool:
    """The `ack` option: True for `completed` (commit only once the import is terminal)."""
    ack = options.get("ack", "accepted")
    if ack not in ("accepted", "completed"):
        raise ConfigError("destination.ack", f"must be accepted or completed, got {ack!r}")
    return bool(ack == "completed")


class Destination:
    """One bulk API. `type` is its name in the configuration; `max_records` its documented batch cap;
    `schema_file` the Avro schema its records fit (None: any JSON object)."""

    type: str = ""
    max_records: int = 1000
    schema_file: str | Path | None = None
    ack_completed: bool = False
    # Records in the API's own field names where those are not Avro names (mediarithmics' `$ts`): the
    # schema's names from them, before validation. None: the schema's names are the API's.
    from_api_names: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Set by the pipeline when each record's payload is exactly what its JSON value decodes to (format
    # json, no mapping): a builder may then send the value's bytes instead of encoding the payload again.
    payload_is_value: bool = False
    # Set by the pipeline: counts an answer that differs from our assumption of the API
    # (`answers_unexpected_total{what}`).
    count_unexpected: Callable[[str], None] = staticmethod(_uncounted)

    def unexpected(self, what: str, message: str) -> None:
        """An answer differs from our assumption of the API: said once per process in the log, counted
        every time in the metric, so it is seen without flooding the log."""
        self.count_unexpected(what)
        if (self.type, what) not in _warned:
            _warned.add((self.type, what))
            log.warning("%s: %s (said once; counted in answers_unexpected_total)", self.type, message)

    def check(self, payload: dict[str, Any]) -> str | None:
        """A rule the schema cannot say (e.g. a timestamp's zone); the problem in words, or None."""
        return None

    def setup(self) -> Request | None:
        """A request to make before the next batch (e.g. creating an import), or None."""
        return None

    def read_setup(self, status: int, body: bytes, request: Request) -> bool:
        """Whether the setup request succeeded."""
        return True

    def build(self, batch: Sequence[Record]) -> Request:
        """The request carrying this batch."""
        raise NotImplementedError

    def read_success(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        """Per-record outcomes of a 2xx answer; an answer of an unknown shape is RetryAfter, never Success."""
        raise NotImplementedError

    def read_refusal(self, status: int, body: bytes, request: Request, batch: Sequence[Record]) -> Reading:
        """What a 4xx other than 401/403/408/425/429 means for this batch."""
        raise NotImplementedError

    def track(self, success: Success, request: Request) -> Request | None:
        """The status request following an accepted import to its end, or None if there is none."""
        return None

    def read_status(
        self, status: int, body: bytes, request: Request, batch: Sequence[Record]
    ) -> StatusReading:
        """Where the import stands."""
        return Done()
