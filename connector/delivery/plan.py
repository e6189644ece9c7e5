"""Pure delivery decisions, made without I/O and tested without an event loop.

What follows from an answer: which records are done, which go again, which cannot go again.
"""

from __future__ import annotations

from collections.abc import Sequence

from connector.destinations.base import Success
from connector.records import Record

OUT_OF_ORDER = "not sent again: a later record with the same key was accepted (per-key order)"


def keep_key_order(success: Success, records: Sequence[Record]) -> Success:
    """`success` with every record to retry that a later record of the same key was accepted after
    moved to the rejected: sending it again would deliver it after that record. Records with the same
    Kafka key reach the destination in offset order, or go to the dead-letter topic."""
    if not success.retry:
        return success
    retry = set(success.retry)
    rejected = success.rejected
    # The keys accepted, each with the position of its last accepted record.
    last_accepted: dict[bytes, int] = {}
    for i, record in enumerate(records):
        if i not in retry and i not in rejected:
            key = record.key
            if key is not None:
                last_accepted[key] = i
    if not last_accepted:
        return success
    moved: dict[int, str] = {}
    for i in success.retry:
        key = records[i].key
        if key is not None and last_accepted.get(key, -1) > i:
            moved[i] = OUT_OF_ORDER
    if not moved:
        return success
    return Success(
        rejected={**rejected, **moved},
        import_id=success.import_id,
        retry=tuple(i for i in success.retry if i not in moved),
    )
