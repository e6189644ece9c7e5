"""Whether a sink should stop taking messages. Pure: the caller passes what is held.

Intake stops when the buffer reaches its byte bound, when the records of imports still followed reach a
bound of their own of the same size, or while the destination holds requests back (429, spent budget)
once every lane has a batch waiting: reading further would only fill memory. It goes on when both are
at half their bound, and nothing is held back. (The worker stops reading at once, and pauses the
partitions if the stop lasts, so the consumer keeps being polled and the group sees it alive.)

Records of followed imports have their own bound because they leave the buffer only when the import's
status says it ended, which may take longer than sending them: counted in the buffer's bound, imports
that take a second to end capped the throughput at a bound's worth of records per second.
"""

from __future__ import annotations


class Backpressure:
    def __init__(self, max_bytes: int, enough_records: int) -> None:
        self.max_bytes = max_bytes
        self.resume_below = max_bytes // 2
        self.enough_records = enough_records  # one full batch per lane
        self.paused = False

    def update(self, records: int, nbytes: int, held: bool, following: int = 0) -> bool | None:
        """Given what is held now (`following`: bytes of the records of imports still followed): True,
        stop now; False, go on now; None, no change."""
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
