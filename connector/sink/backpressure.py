"""Pause/resume bookkeeping: how many bytes a sink holds, and whether its partitions should be paused.

Pausing rather than blocking keeps the consumer polled, so the group sees it alive and no rebalance
happens while a destination is slow or down. Resuming at half the bound avoids flapping.
"""

from __future__ import annotations


class Backpressure:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.resume_below = max_bytes // 2
        self.bytes = 0
        self.records = 0
        self.paused = False

    def add(self, records: int, nbytes: int) -> None:
        self.records += records
        self.bytes += nbytes

    def remove(self, records: int, nbytes: int) -> None:
        self.records -= records
        self.bytes -= nbytes

    def should_pause(self) -> bool:
        return not self.paused and self.bytes >= self.max_bytes

    def should_resume(self) -> bool:
        return self.paused and self.bytes <= self.resume_below
