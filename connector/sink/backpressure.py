"""Whether a sink should stop taking messages. Pure: the caller passes what is held.

Intake stops when the buffer reaches its byte bound, when the records of imports still followed reach a
bound of their own of the same size, or while the destination holds requests back (429, spent budget)
once every lane has a batch waiting: reading further would only fill memory. It goes on when both are
at half their bound, and nothing is held back. (The worker stops reading at once, and pauses the
partitions if the stop lasts, so the consumer keeps being polled and the group sees it alive.)

In the buffer's bound each record counts for its bytes plus `record_cost` (what holding one costs beyond
its value: the message, the record, its decoded payload), so no record is free: a stream of empty values
or tombstones waiting for their dead letters' acknowledgements stops intake too. The followed imports'
bound counts value bytes (valid, non-empty payloads; the cost there halved throughput into Rally UXR).

Records of followed imports have their own bound because they leave the buffer only when the import's
status says it ended, which may take longer than sending them: counted in the buffer's bound, imports
that take a second to end capped the throughput at a bound's worth of records per second.
"""

from __future__ import annotations

# Bytes a held record costs beyond its value (a Message, a Record, a payload dict), for the bound.
RECORD_COST = 256


class Backpressure:
    def __init__(self, max_bytes: int, enough_records: int, record_cost: int = 0) -> None:
        self.max_bytes = max_bytes
        self.record_cost = record_cost
        self.resume_below = max_bytes // 2
        self.enough_records = enough_records  # one full batch per lane
        self.paused = False

    def update(
        self, records: int, nbytes: int, held: bool, following: int = 0, following_records: int = 0
    ) -> bool | None:
        """Given what is held now (`following`: bytes of the records of imports still followed, and
        `following_records` how many): True, stop now; False, go on now; None, no change."""
        nbytes += records * self.record_cost
        following += following_records * self.record_cost
        stocked = held and records >= self.enough_records
        if not self.paused and (nbytes >= self.max_bytes or following >= self.max_bytes or stocked):
            self.paused = True
            return True
        if (
            self.paused
            and nbytes <= self.resume_below
            and following <= self.resume_below
            and not (held and records >= self.enough_records // 2)
        ):
            self.paused = False
            return False
        return None
