import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from connector.delivery.retry import Backoff, Fatal, Retry, classify_status, retry_after


def test_status_routes() -> None:
    assert classify_status(200) == "read_success"
    assert classify_status(202) == "read_success"
    for s in (408, 425, 429, 500, 502, 503, 504):
        assert classify_status(s) == Retry(str(s))
    assert isinstance(classify_status(401), Fatal)
    assert isinstance(classify_status(403), Fatal)
    for s in (400, 404, 409, 413, 422, 501):
        assert classify_status(s) == "read_refusal"


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
