"""Single requests (the People.ai source, 413s): every resend through the planner, and a request that
may have taken effect (creating an export job) never sent again blind."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import httpx
import orjson
import pytest

from connector.config import DeliverySettings, RetrySettings, parse_settings
from connector.delivery.http import HttpxClient
from connector.delivery.plan import Policy, Resend, Unanswered, after_request
from connector.delivery.retry import RETRY_STATUSES
from connector.delivery.service import DeliveryService
from connector.destinations.http_bulk import HttpBulk
from connector.metrics import Metrics
from connector.outcomes import BatchResult
from connector.sources import peopleai
from connector.sources.client import RequestFailed
from connector.sources.cursor import Cursor, Window
from connector.sources.source import JobSlots, PeopleAiSource
from tests.unit.helpers import record

POLICY = Policy(4, lambda attempt, hint: 0.0)


def test_after_request_is_pure_and_bounded() -> None:
    def step(status: int | None, attempt: int = 1, unclear: bool = True) -> object:
        return after_request(
            status, attempt, retry_statuses=RETRY_STATUSES, resend_unclear=unclear, hint=None, policy=POLICY
        )

    assert step(200) is None and step(404) is None
    assert step(502) == Resend(0.0) and step(None) == Resend(0.0)
    assert isinstance(step(502, attempt=4), Unanswered)
    assert isinstance(step(502, unclear=False), Unanswered) and isinstance(
        step(None, unclear=False), Unanswered
    )
    assert step(429, unclear=False) == Resend(0.0)  # a 429 did not take effect


def _source(handler: Any) -> tuple[PeopleAiSource, list[str]]:
    settings = parse_settings(
        {
            "kafka": {"bootstrap.servers": "127.0.0.1:1"},
            "sources": [
                {
                    "name": "pai",
                    "type": "peopleai.activities",
                    "url": "http://peopleai",
                    "auth": {
                        "type": "oauth2_client_credentials",
                        "token_url": "http://peopleai/auth/v1/tokens",
                        "client_id": "id",
                        "client_secret": "pai-secret-xyz",
                    },
                    "start_date": "2025-01-01",
                    "topic": "pai.activities",
                    "delivery": {
                        "retry": {"max_attempts": 5, "initial_backoff": "10ms", "max_backoff": "20ms"}
                    },
                }
            ],
        }
    )
    source = PeopleAiSource(settings.sources[0], settings.kafka, Metrics(), JobSlots())
    seen: list[str] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        response: httpx.Response = handler(request)
        return response

    source.api._client = httpx.AsyncClient(
        base_url="http://peopleai", transport=httpx.MockTransport(recording)
    )
    return source, seen


@pytest.mark.parametrize("failure", [502, 503, 504, "timeout"])
def test_the_job_creating_post_is_not_resent_after_an_answer_that_may_have_created_it(
    failure: object,
) -> None:
    """It was retried after a 502 or a timeout that may already have created the job: orphan jobs ate
    the account's job limit."""

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"jobs": []})
        if failure == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(int(str(failure)))

    source, seen = _source(api)
    cursor = Cursor("snapshot", date(2025, 1, 1))
    window = Window("snapshot", date(2025, 1, 1), date(2025, 1, 14))
    with pytest.raises(RequestFailed, match="may have taken effect"):
        asyncio.run(source._job(cursor, window))
    assert seen == ["GET", "POST"]  # one POST; the window is tried again later, the job list first


def test_the_job_creating_post_is_resent_after_a_429() -> None:
    answers = iter([httpx.Response(429), httpx.Response(429)])

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"jobs": []})
        return next(answers, httpx.Response(201, json={"job_id": "j1", "state": "Queued"}))

    source, seen = _source(api)
    cursor = Cursor("snapshot", date(2025, 1, 1))
    window = Window("snapshot", date(2025, 1, 1), date(2025, 1, 14))
    source.producer = None

    async def go() -> None:
        with pytest.raises(AssertionError):  # past the POST it needs its transactional producer
            await source._job(cursor, window)

    asyncio.run(go())
    assert seen == ["GET", "POST", "POST", "POST"]
    assert peopleai.JOBS.endswith("/jobs")


def test_a_413_is_split_like_a_400_and_a_record_alone_is_rejected() -> None:
    """A 413 dead-lettered the whole batch as rejected, and replay rebuilt the same batch."""
    sizes: list[int] = []

    def api(request: httpx.Request) -> httpx.Response:
        lines = request.content.splitlines()
        sizes.append(len(lines))
        if len(lines) > 2 or any(orjson.loads(x)["big"] for x in lines):
            return httpx.Response(413, text="payload too large")
        return httpx.Response(200)

    async def go() -> BatchResult:
        async with httpx.AsyncClient(base_url="http://api", transport=httpx.MockTransport(api)) as client:
            delivery = DeliverySettings(retry=RetrySettings(max_attempts=3, initial_backoff=0.001))
            service = DeliveryService(
                HttpBulk({"body": "ndjson"}), HttpxClient(client), delivery, Metrics().sink("s")
            )
            batch = [record({"i": i, "big": i == 6}, i, key=b"%d" % i) for i in range(8)]
            return await service.deliver(batch)

    result = asyncio.run(go())
    assert sorted(r.offset for r in result.delivered) == [0, 1, 2, 3, 4, 5, 7]
    assert [(r.offset, f.reason, f.http_status) for r, f in result.failed] == [(6, "rejected", 413)]
    assert len(sizes) <= 2 * 8 - 1
