"""Whether a sink's partitions should be paused. Pure: the caller passes what is held.

Pausing rather than blocking keeps the consumer polled, so the group sees it alive and no rebalance
happens while a destination is slow, limited or down. Partitions pause when the buffer reaches its byte
bound, or while the destination holds requests back (429, spent budget) once every lane has a batch
waiting: reading further would only fill memory. They resume at half the bound, when no longer held.
"""

from __future__ import annotations


class Backpressure:
    def __init__(self, max_bytes: int, enough_records: int) -> None:
        self.max_bytes = max_bytes
        self.resume_below = max_bytes // 2
        self.enough_records = enough_records  # one full batch per lane
        self.paused = False

    def update(self, records: int, nbytes: int, held: bool) -> bool | None:
        """Given what is held now: True, pause now; False, resume now; None, no change."""
        stocked = held and records >= self.enough_records
        if not self.paused and (nbytes >= self.max_bytes or stocked):
            self.paused = True
            return True
        if self.paused and nbytes <= self.resume_below and not (held and records >= self.enough_records // 2):
            self.paused = False
            return False
        return None
