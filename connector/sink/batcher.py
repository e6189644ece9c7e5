"""Count-, byte- and time-bounded batching. Pure: no I/O, the caller passes the clock.

A batch closes when it holds `max_records`, when the next record would take it past `max_bytes`, or when
`max_wait` has passed since its first record. A record larger than `max_bytes` on its own never reaches
the batcher (the pipeline dead-letters it as `record_too_large`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batch(Generic[T]):
    __slots__ = ("items", "nbytes", "opened_at")

    def __init__(self, opened_at: float) -> None:
        self.items: list[T] = []
        self.nbytes = 0
        self.opened_at = opened_at

    def __len__(self) -> int:
        return len(self.items)

    def retain(self, keep: Callable[[T], bool], size: Callable[[T], int]) -> None:
        """Keep only the items for which `keep` is true; the byte count is derived from what is kept."""
        kept = [i for i in self.items if keep(i)]
        if len(kept) != len(self.items):
            self.items = kept
            self.nbytes = sum(size(i) for i in kept)


class Batcher(Generic[T]):
    def __init__(self, max_records: int, max_bytes: int, max_wait: float) -> None:
        if max_records < 1 or max_bytes < 1 or max_wait < 0:
            raise ValueError("batch bounds must be positive")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_wait = max_wait
        self._open: Batch[T] | None = None

    @property
    def open_batch(self) -> Batch[T] | None:
        return self._open

    def add(self, item: T, size: int, now: float) -> tuple[Batch[T], ...]:
        """Add one item; returns the batches this closed, oldest first (usually none)."""
        closed: tuple[Batch[T], ...] = ()
        batch = self._open
        if batch is not None and batch.nbytes + size > self.max_bytes:
            closed = (batch,)
            batch = None
        if batch is None:
            batch = self._open = Batch(now)
        batch.items.append(item)
        batch.nbytes += size
        if len(batch.items) >= self.max_records:
            self._open = None
            closed = (*closed, batch)
        return closed

    def deadline(self) -> float | None:
        """When the open batch is due by time, or None."""
        return None if self._open is None else self._open.opened_at + self.max_wait

    def take_due(self, now: float) -> Batch[T] | None:
        """The open batch, if its time has come."""
        batch = self._open
        if batch is not None and now - batch.opened_at >= self.max_wait:
            self._open = None
            return batch
        return None

    def flush(self) -> Batch[T] | None:
        """The open batch, whatever its age (shutdown)."""
        batch, self._open = self._open, None
        return batch

    def retain(self, keep: Callable[[T], bool], size: Callable[[T], int]) -> None:
        """Keep only the open batch's items for which `keep` is true (others: partitions revoked)."""
        batch = self._open
        if batch is not None:
            batch.retain(keep, size)
            if not batch.items:
                self._open = None
