"""The only place a record's fate meets offsets, dead letters and the `ack` policy.

Every stage reports typed outcomes (connector.outcomes) and nothing else: decoding and validation a
Failure before delivery, the send stack a BatchResult (done, failed, tracked), the import follower an
import's end. This module applies them:

- done: the record's offset is settled;
- failed: its dead letter is written, and the offset settles when the broker acknowledges it;
- tracked: under `ack: accepted` the offset settles now and the import is followed only to dead-letter
  what it fails; under `ack: completed` it settles when the import ends;
- an import's end: its failed records are dead-lettered (import_failed), the others settle (completed).

Why a record is settled once: a batch's result holds each record in one of done, failed or a tracked
import (the planner's Plan partitions each part, and the result only concatenates plans); an import
ends once (the follower forgets it as it reports it). A record settled twice (delivered under `ack:
accepted`, then failed by its import) is dead-lettered as the import says, while its offset, already
passed, does not move: OffsetTracker.settle refuses an offset the commit point has passed. A record
whose partition was revoked since it was consumed is never settled here: its partition's new owner
decides about it (the ownership epoch is checked once, in `owned`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from connector.delivery.imports import ImportFollower
from connector.destinations.base import Done
from connector.errors import DeadLetterError, FatalError
from connector.metrics import SinkMetrics
from connector.outcomes import BatchResult, Failure, Tracked
from connector.records import Record
from connector.sink.offsets import OffsetTracker

log = logging.getLogger(__name__)


class DeadLetters(Protocol):
    """Where failed records go (connector.deadletter.DeadLetterWriter, or a fake in unit tests)."""

    topic: str

    @property
    def pending(self) -> int:
        """Writes the broker has not answered yet."""
        ...

    def held(self) -> tuple[int, int]:
        """(records, bytes) of those writes."""
        ...

    def write(self, record: Record, failure: Failure) -> None: ...

    def poll(self) -> None: ...

    def flush(self, timeout: float) -> int: ...


class Settle:
    def __init__(
        self,
        name: str,
        offsets: OffsetTracker,
        metrics: SinkMetrics,
        ack_completed: bool,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.name = name
        self.offsets = offsets
        self.m = metrics
        self.ack_completed = ack_completed
        self._on_fatal = on_fatal
        self.dead_letters: DeadLetters | None = None
        self.imports: ImportFollower | None = None

    def owned(self, record: Record) -> bool:
        """Whether the record's partition is still assigned as when it was consumed."""
        return self.offsets.epoch((record.topic, record.partition)) == record.epoch

    def _settle(self, records: Iterable[Record]) -> None:
        settle = self.offsets.settle
        for record in records:
            settle((record.topic, record.partition), record.epoch, record.offset)

    def dead_letter(self, record: Record, failure: Failure) -> None:
        """A record that cannot be delivered: its dead letter is written (settled once acknowledged)."""
        if not self.owned(record):
            return  # revoked meanwhile: the partition's new owner decides about this record
        assert self.dead_letters is not None, "attach() the dead-letter writer first"
        self.dead_letters.write(record, failure)

    def batch(self, result: BatchResult) -> None:
        """A batch's result, from the send stack."""
        self._settle(result.done)
        for record, failure in result.failed:
            self.dead_letter(record, failure)
        for tracked in result.tracked:
            if not self.ack_completed:
                self._settle(tracked.records)
            if self.imports is not None and self.imports.unsupported is None:
                self.imports.add(tracked)
            # Imports are not followed (the status endpoint is missing): under ack: accepted they were
            # settled above; under ack: completed the sink has stopped, and nothing past them commits.

    def import_ended(self, tracked: Tracked, done: Done, outcome: str) -> None:
        """An import ended; its failed records are dead-lettered with reason import_failed."""
        hold = self.ack_completed
        # Usually nothing failed and nothing waits to settle: then no record needs looking at.
        for i, record in enumerate(tracked.records if done.failed or hold else ()):
            message = done.failed.get(i)
            if message is not None:
                failure = Failure("import_failed", message, attempts=1, import_id=tracked.import_id)
                self.dead_letter(record, failure)
            elif hold:
                self.offsets.settle((record.topic, record.partition), record.epoch, record.offset)
        self.m.imports(outcome)
        if done.failed:
            log.warning(
                "%s: import %s: %d records failed",
                self.name,
                tracked.import_id,
                len(done.failed),
                extra={"import_id": tracked.import_id},
            )

    def imports_unfollowed(self, status: int, pending: list[Tracked]) -> None:
        """The import status endpoint answers as missing: imports can no longer be followed."""
        self.m.import_status_unsupported.set(1)
        if self.ack_completed:
            self._on_fatal(
                FatalError(
                    f"{self.name}: ack: completed needs the import status endpoint, which answers HTTP "
                    f"{status}; set ack: accepted to deliver without following imports"
                )
            )
            return  # nothing of these imports is settled, so nothing past them is committed
        for tracked in pending:
            self.import_ended(tracked, Done(), "unknown")

    def dead_lettered(self, record: Record, failure: Failure, ok: bool, why: str = "") -> None:
        """The broker answered a dead-letter write (`why` it refused it)."""
        if ok:
            self.offsets.settle((record.topic, record.partition), record.epoch, record.offset)
        else:
            topic = self.dead_letters.topic if self.dead_letters is not None else "?"
            message = f"{self.name}: could not write to dead-letter topic {topic}"
            if why:
                message += f": {why}"
            if "authoriz" in why.lower():
                message += "; the sink needs Write on its dead-letter topic (see the ACLs in operations.md)"
            self._on_fatal(DeadLetterError(message))
