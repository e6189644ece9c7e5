"""Where an export source stands: the next window to export, and what the open day has produced. Pure.

A first run exports `snapshot` windows (activities by activity date) from `start_date` up to today, each
at most `snapshot_window` days; then `delta` windows (activities by processing date) from the open day
to today, every `interval`. Windows are whole UTC days, so a delta asks for today again each time, and the
API serves today's activities again: `seen` holds the uid (and ingest time) of every activity produced
whose processing day is the open day or later, and an activity is produced again only if it was
processed again since (a later `ingest_timestamp`). Entries of days before the open day are dropped, so
`seen` holds at most about a day of activities.

The cursor is written with the window's records in one Kafka transaction (see connector.sources.state).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

DELTA_MAX_DAYS = 14  # People.ai: the longest delta export

Phase = Literal["snapshot", "delta"]


@dataclass(frozen=True, slots=True)
class Window:
    export_type: Phase
    start: date
    end: date

    def label(self) -> str:
        return f"{self.export_type} {self.start.isoformat()}..{self.end.isoformat()}"


@dataclass(slots=True)
class Cursor:
    phase: Phase
    next_day: date  # snapshot: the first day not exported yet; delta: the open day
    seen: dict[str, str] = field(default_factory=dict)  # uid -> ingest time ("" when the record has none)
    seen_day: dict[str, str] = field(default_factory=dict)  # uid -> its processing day (yyyy-MM-dd)
    exported_at: float = 0.0  # epoch seconds: activities processed before this are in Kafka
    job: dict[str, Any] | None = None  # the export job of the window in progress: {id, window}
    # The UTC day the snapshot began: deltas start there, so whatever was processed while the snapshot ran
    # (for days, if it is long or the process was down) is exported too.
    began: date | None = None

    @classmethod
    def first(cls, start: date, today: date) -> Cursor:
        return cls("snapshot", start, began=today)

    def window(self, today: date, snapshot_days: int) -> Window:
        """The next window to export."""
        if self.phase == "snapshot":
            end = min(self.next_day + timedelta(days=snapshot_days - 1), today)
            return Window("snapshot", self.next_day, max(end, self.next_day))
        end = min(self.next_day + timedelta(days=DELTA_MAX_DAYS - 1), today)
        return Window("delta", self.next_day, max(end, self.next_day))

    def caught_up(self, today: date) -> bool:
        """Whether the next window is a delta of today only (the source then waits `interval`)."""
        return self.phase == "delta" and self.next_day >= today

    def is_new(self, uid: str, ingested: str) -> bool:
        """Whether an activity has not been produced yet in this form."""
        before = self.seen.get(uid)
        return before is None or (ingested != "" and ingested > before)

    def produced(self, uid: str, ingested: str, day: str) -> None:
        self.seen[uid] = ingested
        self.seen_day[uid] = day

    def advanced(self, window: Window, today: date, exported_at: float) -> Cursor:
        """The cursor once `window` is in Kafka (a new object; `self` stays as it was for an abort)."""
        keep_from = next_day = min(window.end, today)
        phase: Phase = "delta"
        if window.export_type == "snapshot":
            began = self.began or today
            keep_from = began
            if window.end < today:
                phase, next_day = "snapshot", window.end + timedelta(days=1)
            else:
                next_day = began  # the first delta covers what was processed since the snapshot began
        keep = keep_from.isoformat()
        seen_day = {uid: day for uid, day in self.seen_day.items() if day >= keep}
        return replace(
            self,
            phase=phase,
            next_day=next_day,
            seen={uid: self.seen[uid] for uid in seen_day},
            seen_day=seen_day,
            exported_at=exported_at,
            job=None,
        )

    def copy(self) -> Cursor:
        return replace(self, seen=dict(self.seen), seen_day=dict(self.seen_day))

    # --- in the state topic --------------------------------------------------------------------------------

    def head(self, chunks: int) -> dict[str, Any]:
        """The cursor's own message; `seen` is written in `chunks` messages beside it."""
        return {
            "version": 1,
            "phase": self.phase,
            "next_day": self.next_day.isoformat(),
            "exported_at": self.exported_at,
            "job": self.job,
            "began": self.began.isoformat() if self.began else None,
            "seen_chunks": chunks,
        }

    def seen_chunks(self, size: int) -> list[list[list[str]]]:
        items = [[uid, self.seen[uid], self.seen_day[uid]] for uid in self.seen]
        return [items[i : i + size] for i in range(0, len(items), size)]

    @classmethod
    def from_state(cls, head: dict[str, Any], chunks: Iterable[list[list[str]]]) -> Cursor:
        cursor = cls(head["phase"], date.fromisoformat(head["next_day"]))
        cursor.exported_at = float(head.get("exported_at", 0.0))
        cursor.job = head.get("job")
        cursor.began = date.fromisoformat(head["began"]) if head.get("began") else None
        for chunk in chunks:
            for uid, ingested, day in chunk:
                cursor.produced(uid, ingested, day)
        return cursor


def utc_today(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


def day_of(timestamp: Any) -> str | None:
    """The UTC day (yyyy-MM-dd) of an RFC 3339 time or an epoch number, or None if it is neither."""
    ms = epoch_ms(timestamp)
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def epoch_ms(timestamp: Any) -> int | None:
    """Epoch milliseconds of an RFC 3339 time, or of a number (milliseconds; below 1e11, seconds)."""
    if isinstance(timestamp, bool):
        return None
    if isinstance(timestamp, int | float):
        return int(timestamp if timestamp >= 1e11 else timestamp * 1000)
    if isinstance(timestamp, str) and len(timestamp) >= 10:
        try:
            parsed = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    return None
