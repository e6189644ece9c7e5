"""The People.ai (Backstory) Raw Activity Data export API: what the source sends and how it reads answers.

Seed 004 and ../shared/reference/seeded-apis.md §4: `POST /pull/v1/export/activities/jobs` creates a job
(start_date and end_date whole UTC days, activity_type, output_format JSONLines, export_type snapshot or
delta); `GET .../jobs/{job_id}` answers its state (Queued, Running, Completed, Canceled, Failed);
`GET .../jobs/{job_id}/data?fragment=k` serves fragment k of a Completed job. Where the docs are silent
(interface.md): a Completed job's `fragment` is the number of fragments; without it, one download without
the parameter. At most 2 jobs run and 10 are queued (running included) per account; data may take up to
60 s per 20 MB to come.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from connector.codec import DecodeError
from connector.codec.json import JsonDecoder
from connector.errors import BadLine as BadLine
from connector.errors import ExportAnswerError as ExportAnswerError
from connector.sources.cursor import Window, day_of, epoch_ms

JOBS = "/pull/v1/export/activities/jobs"
TOKEN_PATH = "/auth/v1/tokens"
MAX_RUNNING_JOBS = 2
MAX_QUEUED_JOBS = 10  # running included
ACTIVE_STATES = frozenset({"Queued", "Running"})
TERMINAL_STATES = frozenset({"Completed", "Canceled", "Failed"})
JOB_STATES = ("Queued", "Running", "Completed", "Canceled", "Failed")
SECONDS_PER_20MB = 60.0  # the documented download timeout


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    state: str
    fragments: int | None  # Completed jobs: how many fragments to download (None: one, unfragmented)
    results_size: int | None
    window: tuple[str, str, str, str] = ("", "", "", "")  # export_type, start_date, end_date, activity_type

    def download_timeout(self) -> float:
        """Seconds one fragment may take to download, from the documented 60 s per 20 MB."""
        if not self.results_size:
            return SECONDS_PER_20MB
        per_fragment = self.results_size / max(1, self.fragments or 1)
        return SECONDS_PER_20MB * max(1, math.ceil(per_fragment / 20_000_000))

    def data_paths(self) -> list[str]:
        base = f"{JOBS}/{self.id}/data"
        if not self.fragments:
            return [base]
        return [f"{base}?fragment={k}" for k in range(self.fragments)]


def create_body(window: Window, activity_type: str) -> bytes:
    return orjson.dumps(
        {
            "start_date": window.start.isoformat(),
            "end_date": window.end.isoformat(),
            "activity_type": activity_type,
            "output_format": "JSONLines",
            "export_type": window.export_type,
        }
    )


def read_job(body: bytes) -> Job:
    try:
        data = orjson.loads(body)
        job_id = data["job_id"]
        state = data["state"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ExportAnswerError("a job answer without job_id and state") from None
    if not isinstance(state, str) or state not in JOB_STATES:
        raise ExportAnswerError(f"a job in an unknown state {str(state)[:40]!r}")
    fragments = data.get("fragment")
    size = data.get("results_size")
    return Job(
        id=str(job_id),
        state=state,
        fragments=fragments if isinstance(fragments, int) and fragments > 0 else None,
        results_size=size if isinstance(size, int) and size >= 0 else None,
        window=(
            str(data.get("export_type", "")),
            str(data.get("start_date", "")),
            str(data.get("end_date", "")),
            str(data.get("activity_type", "")),
        ),
    )


def read_jobs(body: bytes) -> list[Job]:
    """The job list (`GET jobs`: the account's jobs of the past 10 days): a list, or {jobs: [...]}."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ExportAnswerError("a job list that is not JSON") from None
    if isinstance(data, dict):
        data = data.get("jobs", data.get("data"))
    if not isinstance(data, list):
        raise ExportAnswerError("a job list that is not a list")
    return [read_job(orjson.dumps(item)) for item in data if isinstance(item, dict)]


@dataclass(frozen=True, slots=True)
class Activity:
    uid: str
    value: bytes  # the line as the API sent it
    ingested: str  # its ingest_timestamp, comparable as a string ("" when absent)
    ingest_day: str | None  # the UTC day it was processed on
    activity_day: str | None  # the UTC day of its `timestamp`


_JSON = JsonDecoder()


def read_line(line: bytes) -> Activity:
    try:
        data = _JSON.decode(line)  # a JSON object, as a sink's `format: json` takes a record value
    except DecodeError as exc:
        raise BadLine(str(exc)) from None
    uid = data.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadLine("an activity without a uid")
    ingested = data.get("ingest_timestamp")
    ms = epoch_ms(ingested)
    # Compared as strings: epoch milliseconds, zero-padded, whatever form the API wrote the time in.
    ingested_text = f"{ms:015d}" if ms is not None and ms >= 0 else ""
    return Activity(
        uid=uid,
        value=line,
        ingested=ingested_text,
        ingest_day=day_of(ingested),
        activity_day=day_of(data.get("timestamp")),
    )
