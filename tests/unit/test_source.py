"""The People.ai source's pure parts: windows, the open day's dedup, the API's answers, its settings."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from connector.config import parse_settings
from connector.errors import ConfigError
from connector.sources.cursor import Cursor, Window
from connector.sources.peopleai import BadLine, ExportAnswerError, Job, read_job, read_line

TODAY = date(2026, 12, 2)


def test_snapshot_windows_cover_start_to_today_then_deltas_of_the_open_day() -> None:
    cursor = Cursor.first(TODAY - timedelta(days=59), TODAY)
    windows = []
    while cursor.phase == "snapshot":
        window = cursor.window(TODAY, 20)
        windows.append(window)
        cursor = cursor.advanced(window, TODAY, 0.0)
    assert windows == [
        Window("snapshot", date(2026, 10, 4), date(2026, 10, 23)),
        Window("snapshot", date(2026, 10, 24), date(2026, 11, 12)),
        Window("snapshot", date(2026, 11, 13), date(2026, 12, 2)),
    ]
    assert cursor.window(TODAY, 20) == Window("delta", TODAY, TODAY)
    # The next day, the delta asks for the open day again, and today.
    tomorrow = TODAY + timedelta(days=1)
    assert cursor.window(tomorrow, 20) == Window("delta", TODAY, tomorrow)
    assert cursor.advanced(cursor.window(tomorrow, 20), tomorrow, 0.0).next_day == tomorrow


def test_a_delta_after_a_long_stop_spans_at_most_fourteen_days_and_catches_up() -> None:
    cursor = Cursor("delta", TODAY - timedelta(days=30))
    window = cursor.window(TODAY, 20)
    assert (window.end - window.start).days + 1 == 14
    cursor = cursor.advanced(window, TODAY, 0.0)
    assert cursor.next_day == window.end and cursor.phase == "delta"


def test_the_open_day_produces_an_activity_once_unless_processed_again() -> None:
    cursor = Cursor("delta", TODAY)
    assert cursor.is_new("a", "2026-12-02T10:00:00Z")
    cursor.produced("a", "2026-12-02T10:00:00Z", "2026-12-02")
    assert not cursor.is_new("a", "2026-12-02T10:00:00Z")
    assert not cursor.is_new("a", "")  # no ingest time: the uid alone decides
    assert cursor.is_new("a", "2026-12-02T11:00:00Z")  # processed again: an update
    cursor.produced("old", "2026-12-01T23:00:00Z", "2026-12-01")
    tomorrow = TODAY + timedelta(days=1)
    advanced = cursor.advanced(Window("delta", TODAY, tomorrow), tomorrow, 0.0)
    assert set(advanced.seen) == set()  # days before the new open day are dropped
    kept = cursor.advanced(Window("delta", TODAY, TODAY), TODAY, 0.0)
    assert set(kept.seen) == {"a"}
    assert set(cursor.seen) == {"a", "old"}  # the cursor it came from is untouched (an abort keeps it)


def test_cursor_round_trips_through_its_state_messages() -> None:
    cursor = Cursor("delta", TODAY, exported_at=123.0, job={"id": "j1", "window": ["delta", "x", "y"]})
    for i in range(12_001):
        cursor.produced(f"u{i}", f"t{i}", "2026-12-02")
    chunks = cursor.seen_chunks(5_000)
    assert [len(c) for c in chunks] == [5_000, 5_000, 2_001]
    head = orjson.loads(orjson.dumps(cursor.head(len(chunks))))
    back = Cursor.from_state(head, [orjson.loads(orjson.dumps(c)) for c in chunks])
    assert back == cursor


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json", "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"type": "email"}', "without a uid"),
        (b'{"uid": 7}', "without a uid"),
    ],
)
def test_lines_that_are_not_activities_are_bad_lines(line: bytes, problem: str) -> None:
    with pytest.raises(BadLine, match=problem):
        read_line(line)


def test_a_line_is_read_with_its_days_and_an_epoch_ingest_time_compares_as_a_number() -> None:
    a = read_line(b'{"uid": "u1", "timestamp": "2026-12-01T23:30:00-02:00", "ingest_timestamp": 900}')
    b = read_line(b'{"uid": "u1", "ingest_timestamp": 10000}')
    assert a.activity_day == "2026-12-02" and a.ingest_day == "1970-01-01"
    c = read_line(b'{"uid": "u", "ingest_timestamp": "2026-12-02T10:00:00.500Z"}')
    d = read_line(b'{"uid": "u", "ingest_timestamp": "2026-12-02T10:30:00+01:00"}')
    assert c.ingested > d.ingested  # instants compared, not strings
    assert b.ingested > a.ingested


def test_job_answers_fragments_and_download_timeouts() -> None:
    job = read_job(b'{"job_id": 123, "state": "Completed", "fragment": 3, "results_size": 90000000}')
    assert job == Job("123", "Completed", 3, 90_000_000)
    assert job.data_paths()[2].endswith("/jobs/123/data?fragment=2")
    assert job.download_timeout() == 120.0  # 30 MB a fragment: 60 s per 20 MB
    assert read_job(b'{"job_id": "j", "state": "Completed"}').data_paths()[0].endswith("/jobs/j/data")
    for body in (b"{}", b"[]", b'{"job_id": "j", "state": "Exploded"}', b"<html>"):
        with pytest.raises(ExportAnswerError):
            read_job(body)


def _doc(**source: Any) -> dict[str, Any]:
    base = {
        "name": "peopleai",
        "type": "peopleai.activities",
        "url": "https://api.people.ai",
        "auth": {
            "type": "oauth2_client_credentials",
            "token_url": "https://api.people.ai/auth/v1/tokens",
            "client_id": "id",
            "client_secret": "${SECRET}",
        },
        "start_date": "2025-01-01",
        "topic": "peopleai.activities",
    }
    return {"kafka": {"bootstrap.servers": "k:9092"}, "sources": [{**base, **source}]}


def test_sources_alone_make_a_configuration_with_defaults() -> None:
    settings = parse_settings(_doc(), env={"SECRET": "s3cret-value"})
    (s,) = settings.sources
    assert settings.sinks == ()
    assert (s.snapshot_window, s.interval, s.state_topic, s.dead_letter_topic, s.activity_type) == (
        30,
        3600.0,
        "activity-connector.state",
        "peopleai.dlq",
        "all",
    )
    assert s.start_date == date(2025, 1, 1)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"auth": {"type": "bearer", "token": "x"}}, "sources[0].auth.type"),
        ({"start_date": "2099-01-01"}, "sources[0].start_date"),
        ({"start_date": "yesterday"}, "sources[0].start_date"),
        ({"snapshot_window": "400d"}, "sources[0].snapshot_window"),
        ({"snapshot_window": "36h"}, "sources[0].snapshot_window"),
        ({"activity_type": "chat"}, "sources[0].activity_type"),
        ({"colour": "red"}, "sources[0]"),
    ],
)
def test_bad_source_settings_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(_doc(**change), env={"SECRET": "s3cret-value"})
    assert caught.value.key.startswith(key), caught.value


def test_a_snapshot_that_ends_days_after_it_began_hands_over_to_a_delta_from_the_day_it_began() -> None:
    began = TODAY
    cursor = Cursor.first(TODAY - timedelta(days=40), began)
    cursor = cursor.advanced(cursor.window(began, 30), began, 0.0)  # the first window, on the first day
    cursor.produced("recent", "x", began.isoformat())  # processed since the snapshot began: kept
    cursor.produced("history", "x", (began - timedelta(days=20)).isoformat())
    later = began + timedelta(days=2)  # the snapshot's last window runs two days later
    cursor = cursor.advanced(cursor.window(later, 30), later, 0.0)
    assert cursor.phase == "delta"
    assert cursor.window(later, 30) == Window("delta", began, later)
    assert set(cursor.seen) == {"recent"}


def test_replay_since_takes_a_time_or_a_duration_ago() -> None:
    from connector.replay import ReplayCounts, parse_since

    assert parse_since("6h", now=100_000.0) == 100_000.0 - 6 * 3600
    assert parse_since("2026-12-02T00:00:00Z") == parse_since("2026-12-02")
    with pytest.raises(ConfigError, match="--since"):
        parse_since("last tuesday")
    counts = ReplayCounts()
    counts.replayed["rejected"] += 2
    counts.skipped["max_replays"] += 1
    assert counts.lines(dry_run=True) == [
        "rejected: 2 would be replayed",
        "skipped (max_replays): 1",
        "total: 2 would be replayed, 1 skipped",
    ]
