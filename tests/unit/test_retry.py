import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson

from connector.delivery.retry import Backoff, decide, retry_after
from connector.destinations.base import GiveUp, RetryAfter, Split, Stop, Success
from connector.destinations.rally_uxr import RallyUxrActivities
from tests.unit.helpers import activity, record

DEST = RallyUxrActivities({})
BATCH = [record(activity("a"), 0), record(activity("b"), 1)]
REQUEST = DEST.build(BATCH)


def _decide(
    status: int | None, body: bytes = b"", headers: dict[str, str] | None = None, why: str = "timeout"
) -> object:
    return decide(DEST, REQUEST, BATCH, status, body, headers, why)


def test_typed_decisions_for_each_kind_of_answer() -> None:
    assert _decide(202, orjson.dumps({"importId": "i"})) == Success(rejected={}, import_id="i")
    assert _decide(
        202, orjson.dumps({"importId": "i", "errors": [{"message": "m", "path": ["peopleActivities", 1]}]})
    ) == (Success(rejected={1: "m"}, import_id="i"))
    assert _decide(None, why="timeout") == RetryAfter("timeout")
    assert _decide(None, why="connection") == RetryAfter("connection")
    for status in (408, 425, 500, 502, 504):
        assert _decide(status) == RetryAfter(str(status))
    assert _decide(429, headers={"retry-after": "7"}) == RetryAfter("429", 7.0)
    assert _decide(503, headers={"retry-after": "2"}) == RetryAfter("503", 2.0)
    assert isinstance(_decide(401), Stop) and isinstance(_decide(403), Stop)
    assert isinstance(_decide(400, orjson.dumps({"errors": []})), Split)
    assert isinstance(_decide(404, b"not here"), GiveUp) and isinstance(_decide(422, b"no"), GiveUp)


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(" 0 ") == 0.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after(header, now=now.timestamp()) == 30.0
    assert retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()) == 0.0


def test_backoff_full_jitter_bounds() -> None:
    b = Backoff(0.5, 8.0, random.Random(1))
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [b.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # the jitter spans the whole range
    assert b.delay(1, at_least=5.0) == 5.0  # an API's Retry-After wins over a shorter jitter
