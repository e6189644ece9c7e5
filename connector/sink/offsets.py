"""Which offsets are safe to commit. Pure: no Kafka calls.

A partition's commit point is one past its last record such that it and every record consumed before it
are settled (delivered, or dead-lettered and acknowledged by the broker). Records settle out of order, so
each partition keeps its unsettled offsets in consumption order and advances over the settled prefix.

Every assignment of a partition gets a new epoch. A record carries the epoch it was consumed in, so an
answer that arrives after its partition was revoked (and maybe assigned again) settles nothing.
"""

from __future__ import annotations

import itertools
from collections import deque

TopicPartition = tuple[str, int]


class PartitionOffsets:
    __slots__ = ("acked", "committed", "done", "epoch", "pending", "position")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.pending: deque[int] = deque()  # consumed, in order, not yet passed by the commit point
        self.done: set[int] = set()  # settled offsets still in `pending`
        self.position = -1  # the commit point: next offset to read after a restart; -1 = nothing yet
        self.committed = -1  # the last commit point handed out for committing
        self.acked = -1  # the last commit point the broker acknowledged

    def advance(self) -> None:
        pending, done = self.pending, self.done
        while pending and pending[0] in done:
            offset = pending.popleft()
            done.discard(offset)
            self.position = offset + 1


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TopicPartition, PartitionOffsets] = {}
        self._epochs = itertools.count(1)

    def assign(self, tp: TopicPartition) -> int:
        """Start tracking a newly assigned partition; returns its epoch."""
        state = PartitionOffsets(next(self._epochs))
        self._parts[tp] = state
        return state.epoch

    def assigned(self) -> list[TopicPartition]:
        return list(self._parts)

    def state(self, tp: TopicPartition) -> PartitionOffsets | None:
        """The partition's bookkeeping, for the consume loop to track records without a lookup each."""
        return self._parts.get(tp)

    def epoch(self, tp: TopicPartition) -> int:
        """The partition's current epoch (0 when it is not assigned)."""
        state = self._parts.get(tp)
        return 0 if state is None else state.epoch

    def revoke(self, tp: TopicPartition) -> int | None:
        """Stop tracking; returns the commit point the broker has not acknowledged yet, if any (a commit
        of it may still be in flight, and fail)."""
        state = self._parts.pop(tp, None)
        if state is None:
            return None
        state.advance()
        return state.position if state.position > state.acked else None

    def track(self, tp: TopicPartition, offset: int) -> None:
        """A record was consumed; it holds the commit point back until settled."""
        self._parts[tp].pending.append(offset)

    def settle(self, tp: TopicPartition, epoch: int, offset: int) -> bool:
        """A record is done. False (and nothing changes) when its partition's epoch has moved on, or the
        commit point has already passed it (settled before: e.g. delivered, then failed in its import)."""
        state = self._parts.get(tp)
        if state is None or state.epoch != epoch or offset < state.position:
            return False
        state.done.add(offset)
        return True

    def to_commit(self) -> dict[TopicPartition, int]:
        """Commit points that moved since the last call; they are taken as committed."""
        result = {}
        for tp, state in self._parts.items():
            state.advance()
            if state.position > state.committed:
                result[tp] = state.committed = state.position
        return result

    def unacknowledged(self) -> dict[TopicPartition, int]:
        """Commit points the broker has not acknowledged (shutdown; a commit whose answer never came).
        They are taken as handed out again."""
        result = {}
        for tp, state in self._parts.items():
            state.advance()
            if state.position > state.acked:
                result[tp] = state.committed = state.position
        return result

    def commit_done(self, tp: TopicPartition, offset: int) -> None:
        """The broker acknowledged a commit of `offset`."""
        state = self._parts.get(tp)
        if state is not None and offset > state.acked:
            state.acked = offset

    def commit_failed(self, tp: TopicPartition, offset: int) -> None:
        """A commit of `offset` failed: hand the commit point out again on the next call."""
        state = self._parts.get(tp)
        if state is not None and state.committed == offset:
            state.committed = state.acked

    def unsettled(self) -> int:
        return sum(len(s.pending) - len(s.done) for s in self._parts.values())

    def partitions(self) -> list[TopicPartition]:
        return list(self._parts)
