"""What the stages of a sink report about records: the typed outcomes that connector.sink.settle applies.

A batch's result holds each record it was handed in exactly one place: done (the API took it and
there is nothing to follow), failed (with the reason its dead letter carries), or in a Tracked import
(the API took it into an import that may still fail it). Records dropped because their partition was
revoked are in none: their partition's new owner sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connector.destinations.base import Request
from connector.records import Reason, Record


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a record was not delivered; becomes its dead letter's headers."""

    reason: Reason
    message: str
    http_status: int | None = None
    http_body: bytes = b""
    attempts: int = 0
    import_id: str | None = None


@dataclass(slots=True)
class Tracked:
    """Records the API accepted into an import that is still running; `status` asks where it stands."""

    records: list[Record]
    status: Request
    import_id: str | None
    nbytes: int = 0  # the records' bytes, held in memory while the import is followed


@dataclass(slots=True)
class BatchResult:
    """A batch's outcome: `done`, `failed` and the records of `tracked` are disjoint."""

    done: list[Record] = field(default_factory=list)  # delivered, nothing to follow
    failed: list[tuple[Record, Failure]] = field(default_factory=list)
    tracked: list[Tracked] = field(default_factory=list)

    @property
    def delivered(self) -> list[Record]:
        """Every record the API accepted: those done and those in imports still followed."""
        return [*self.done, *(r for t in self.tracked for r in t.records)]
