"""The `peopleai.activities` source: export jobs → Kafka, exactly once for `read_committed` consumers.

One window at a time (connector.sources.cursor): create its export job (or take back the one a previous
run left in the cursor), poll it with backoff until Completed, download its fragments in parallel, and
produce each activity (key: uid) inside one Kafka transaction that also moves the cursor past the window.
A crash, a failed download or a stop before the commit aborts the transaction: nothing of the window is
visible, and the window is redone. Lines that are not JSON objects go to the dead-letter topic
(`decode_error`) inside the same transaction.

Job limits (2 running, 10 queued per account): a source has at most one job of its own at a time, jobs
of every source of the process sending to one account share the 2 running slots, and before creating a
job the account's job list is read so that jobs left by a crashed run, or by others, are waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException, Producer

from connector.config import SourceSettings
from connector.delivery.auth import credentials
from connector.delivery.retry import Backoff
from connector.errors import FatalError, StartupError
from connector.errors import JobFailed as JobFailed
from connector.errors import Stopped as Stopped
from connector.kafka import CLIENT_DEFAULTS, CONSUMER_ONLY, KAFKA_LOGGING
from connector.metrics import Metrics
from connector.redact import redact
from connector.sources import peopleai
from connector.sources.client import ApiClient, RequestFailed
from connector.sources.cursor import Cursor, Window, utc_today
from connector.sources.peopleai import BadLine, ExportAnswerError, Job
from connector.sources.state import ensure_topics, read_cursor, write_cursor

log = logging.getLogger(__name__)

POLL_INITIAL = 1.0  # seconds before the first job state poll; then 1.5 times longer each, up to POLL_MAX
POLL_MAX = 30.0
MAX_POLLS = 2_000  # a job that is not done after this many polls (≥ 16 hours) is given up and made anew
MAX_VALUE = 1_000_000 - 16_384  # bytes of a record value: under Kafka's default message limit, headers aside
COMMIT_ATTEMPTS = 5
TRANSACTION_TIMEOUT_MS = 900_000  # the broker's default upper bound; a window must commit within it


class JobSlots:
    """The running-job slots of each People.ai account in this process (2 each)."""

    def __init__(self) -> None:
        self._slots: dict[str, asyncio.Semaphore] = {}

    def of(self, url: str, client_id: str) -> asyncio.Semaphore:
        key = hashlib.sha256(f"{url}\0{client_id}".encode()).hexdigest()
        return self._slots.setdefault(key, asyncio.Semaphore(peopleai.MAX_RUNNING_JOBS))


def producer_config(kafka: Mapping[str, Any], transactional_id: str) -> dict[str, Any]:
    common = {k: v for k, v in kafka.items() if k not in CONSUMER_ONLY}
    return {
        **CLIENT_DEFAULTS,
        **common,
        "transactional.id": transactional_id,
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        "linger.ms": 20,
        "compression.type": "lz4",
        **KAFKA_LOGGING,
    }


class PeopleAiSource:
    def __init__(
        self, settings: SourceSettings, kafka: Mapping[str, Any], metrics: Metrics, slots: JobSlots
    ) -> None:
        self.s = settings
        self.name = settings.name
        self.kafka = kafka
        self.m = metrics.source(settings.name)
        creds = credentials(settings.auth)
        self.api = ApiClient(settings.url, creds, settings.delivery, self.m)
        self._slot = slots.of(settings.url, settings.auth.client_id)
        self._backoff = Backoff(settings.delivery.retry.initial_backoff, settings.delivery.retry.max_backoff)
        self.producer: Producer | None = None
        self.heartbeat = time.monotonic()
        self._ready = False
        self._chunks = 0  # seen chunks of the committed cursor in the state topic
        self._stop = asyncio.Event()
        self._list_unsupported = False

    def ready(self) -> bool:
        return self._ready

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        beat = asyncio.create_task(self._beat())
        work = asyncio.create_task(self._work())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # A stop ends the window in progress wherever it waits (a rate-limit hold, a backoff, a
                # download): its transaction is aborted, and the window is redone on the next start.
                work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                if not stop.is_set():
                    raise
        finally:
            stopping.cancel()
            beat.cancel()
            await self.api.aclose()
            if self.producer is not None:
                await asyncio.to_thread(self.producer.flush, 5)

    async def _work(self) -> None:
        with contextlib.suppress(Stopped):
            await self._loop(await self._start())

    async def _loop(self, cursor: Cursor) -> None:
        failures = 0
        if True:
            while not self._stop.is_set():
                self._lag(cursor)
                if cursor.phase == "delta":
                    wait = cursor.exported_at + self.s.interval - time.time()
                    if wait > 0:
                        await self._sleep(wait)
                        continue
                window = cursor.window(utc_today(time.time()), self.s.snapshot_window)
                try:
                    cursor = await self._export(cursor, window)
                    failures = 0
                except (RequestFailed, ExportAnswerError, JobFailed, KafkaException, BufferError) as exc:
                    failures += 1
                    cursor.job = None  # a job that failed us once is not taken back: the next try makes one
                    delay = self._backoff.delay(min(failures, 16))
                    log.warning(
                        "%s: %s failed (%s); tried again in %.1f s",
                        self.name,
                        window.label(),
                        redact(_message(exc)),
                        delay,
                    )
                    await self._sleep(delay)

    async def _start(self) -> Cursor:
        try:
            await asyncio.to_thread(ensure_topics, self.kafka, self.s.state_topic)
            self.producer = Producer(producer_config(self.kafka, f"activity-connector.{self.name}"))
            # Fences a previous run of this source and aborts the transaction it left open.
            await asyncio.to_thread(self.producer.init_transactions, 60)
            cursor, self._chunks = await asyncio.to_thread(
                read_cursor, self.kafka, self.s.state_topic, self.name
            )
        except KafkaException as exc:
            raise StartupError(f"{self.name}: Kafka: {exc.args[0].str()}") from None
        if cursor is None:
            cursor = Cursor.first(self.s.start_date, utc_today(time.time()))
            log.info("%s: first run: snapshot exports from %s", self.name, self.s.start_date)
        else:
            log.info("%s: resuming at %s %s", self.name, cursor.phase, cursor.next_day)
        self._ready = True
        return cursor

    async def _export(self, cursor: Cursor, window: Window) -> Cursor:
        """One window into Kafka; returns the cursor past it."""
        async with self._slot:
            job = await self._job(cursor, window)
            job = await self._until_done(job)
        started = time.time()
        working = cursor.copy()
        producer = self.producer
        assert producer is not None
        producer.begin_transaction()
        committed = False
        try:
            counts = await self._download(job, window, working)
            advanced = working.advanced(window, utc_today(time.time()), self._exported_at(window, started))
            chunks = write_cursor(producer, self.s.state_topic, self.name, advanced, self._chunks)
            await self._commit()
            committed = True
        finally:
            if not committed:
                await self._abort()
        self._chunks = chunks
        self.m.produced.inc(counts["produced"])
        self.m.decode_errors.inc(counts["bad"])
        for reason in ("already_produced", "before_start_date"):
            self.m.skipped[reason].inc(counts[reason])
        log.info(
            "%s: %s in Kafka: %d produced, %d produced before, %d dated before start_date, %d dead-lettered",
            self.name,
            window.label(),
            counts["produced"],
            counts["already_produced"],
            counts["before_start_date"],
            counts["bad"],
        )
        self._lag(advanced)
        return advanced

    def _exported_at(self, window: Window, started: float) -> float:
        """The time up to which activities are in Kafka once `window` is."""
        end = datetime(window.end.year, window.end.month, window.end.day, tzinfo=UTC).timestamp() + 86400
        return min(end, started)

    # --- the job -------------------------------------------------------------------------------------------

    async def _job(self, cursor: Cursor, window: Window) -> Job:
        """The window's job: the one a previous run created (if the API still has it), or a new one."""
        left = cursor.job
        if left is not None and left.get("window") == [
            window.export_type,
            str(window.start),
            str(window.end),
        ]:
            status, body = await self.api.request("GET", f"{peopleai.JOBS}/{left['id']}")
            if status == 200:
                job = peopleai.read_job(body)
                if job.state not in ("Failed", "Canceled"):
                    log.info("%s: taking back job %s of %s", self.name, job.id, window.label())
                    return job
        await self._wait_for_room()
        # Never sent again blind: a lost answer or a 5xx may have created the job (an orphan would hold
        # one of the account's few job slots until it ends); a 429 is resent.
        status, body = await self.api.request(
            "POST", peopleai.JOBS, peopleai.create_body(window, self.s.activity_type), retry_unclear=False
        )
        if status not in (200, 201, 202):
            raise RequestFailed(f"creating the export job answered HTTP {status}: {_excerpt(body)}")
        job = peopleai.read_job(body)
        self.m.jobs["Queued"].inc()
        log.info("%s: job %s created for %s", self.name, job.id, window.label())
        # Remember the job, so a run that crashes takes it back instead of queueing another.
        remembered = cursor.copy()
        remembered.job = {"id": job.id, "window": [window.export_type, str(window.start), str(window.end)]}
        producer = self.producer
        assert producer is not None
        producer.begin_transaction()
        committed = False
        try:
            write_cursor(producer, self.s.state_topic, self.name, remembered, self._chunks, head_only=True)
            await self._commit()
            committed = True
        finally:
            if not committed:
                await self._abort()
        cursor.job = remembered.job
        return job

    async def _commit(self) -> None:
        """Commit the open transaction. Retried while Kafka says it may be; a commit whose outcome stays
        unknown, or a producer Kafka has fenced (another run of this source took over), is fatal: the
        process restarts and reads back what was committed, rather than guess."""
        producer = self.producer
        assert producer is not None
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(producer.commit_transaction, 120)
                self.m.transactions["committed"].inc()
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.txn_requires_abort():
                    raise  # the caller aborts; the window is redone
                if error.fatal() or not error.retriable() or attempt == COMMIT_ATTEMPTS:
                    raise FatalError(f"{self.name}: committing a transaction failed: {error.str()}") from None
                log.warning("%s: commit not confirmed yet (%s); asking again", self.name, error.str())

    async def _abort(self) -> None:
        self.m.transactions["aborted"].inc()
        producer = self.producer
        assert producer is not None
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(producer.abort_transaction, 60)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal() or not error.retriable() or attempt == COMMIT_ATTEMPTS:
                    raise FatalError(f"{self.name}: aborting a transaction failed: {error.str()}") from None

    async def _wait_for_room(self) -> None:
        """Wait while the account has as many active jobs as may run (ours from a crashed run, others')."""
        if self._list_unsupported:
            return
        for attempt in range(1, MAX_POLLS + 1):
            status, body = await self.api.request("GET", peopleai.JOBS)
            if status != 200:
                log.warning(
                    "%s: the job list answered HTTP %d; jobs are created without it", self.name, status
                )
                self._list_unsupported = True
                return
            active = sum(job.state in peopleai.ACTIVE_STATES for job in peopleai.read_jobs(body))
            if active < peopleai.MAX_RUNNING_JOBS:
                return
            log.info("%s: %d export jobs are active on the account; waiting", self.name, active)
            await self._sleep(min(POLL_MAX, POLL_INITIAL * 1.5**attempt))
        raise JobFailed("the account's export jobs never finished")

    async def _until_done(self, job: Job) -> Job:
        delay = POLL_INITIAL
        seen = job.state
        for _ in range(MAX_POLLS):
            if job.state == "Completed":
                self.m.jobs["Completed"].inc()
                return job
            if job.state in ("Failed", "Canceled"):
                self.m.jobs[job.state].inc()
                raise JobFailed(f"export job {job.id} ended {job.state}")
            await self._sleep(delay)
            delay = min(POLL_MAX, delay * 1.5)
            status, body = await self.api.request("GET", f"{peopleai.JOBS}/{job.id}")
            if status == 404:
                raise JobFailed(f"export job {job.id} is gone (HTTP 404)")
            if status != 200:
                raise RequestFailed(f"the job state answered HTTP {status}")
            job = peopleai.read_job(body)
            if job.state != seen and job.state == "Running":
                self.m.jobs["Running"].inc()
            seen = job.state
        raise JobFailed(f"export job {job.id} did not finish in {MAX_POLLS} polls")

    # --- the data ------------------------------------------------------------------------------------------

    async def _download(self, job: Job, window: Window, working: Cursor) -> dict[str, int]:
        counts = dict.fromkeys(("produced", "already_produced", "before_start_date", "bad"), 0)
        paths = job.data_paths()
        queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        for item in enumerate(paths):
            queue.put_nowait(item)
        fallback_day = min(window.end, utc_today(time.time())).isoformat()
        # A delta's activities count as processed on the open day at least: they stay in `seen` until the
        # open day moves on, whatever their ingest time says (an update may keep its old one).
        floor_day = fallback_day if window.export_type == "delta" else ""
        start = self.s.start_date.isoformat()

        async def worker() -> None:
            while not queue.empty():
                fragment, path = queue.get_nowait()
                done = 0  # lines of this fragment handled: a retried download skips them
                for attempt in range(1, self.s.delivery.retry.max_attempts + 1):
                    try:
                        index = 0
                        async for line in self.api.lines(path, job.download_timeout()):
                            index += 1
                            if index <= done:
                                continue
                            if self._stop.is_set():
                                raise Stopped()
                            await self._take(
                                line, job, fragment, index, working, counts, start, fallback_day, floor_day
                            )
                            done = index
                        break
                    except RequestFailed as exc:
                        if attempt == self.s.delivery.retry.max_attempts:
                            raise
                        log.warning(
                            "%s: fragment %d of job %s: %s; downloaded again",
                            self.name,
                            fragment,
                            job.id,
                            redact(str(exc)),
                        )
                        await self._sleep(self._backoff.delay(attempt))

        workers = [asyncio.create_task(worker()) for _ in range(min(self.s.download_concurrency, len(paths)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return counts

    async def _take(
        self,
        line: bytes,
        job: Job,
        fragment: int,
        index: int,
        working: Cursor,
        counts: dict[str, int],
        start: str,
        fallback_day: str,
        floor_day: str,
    ) -> None:
        try:
            if len(line) > MAX_VALUE:
                raise BadLine(
                    f"a line of {len(line)} bytes, above what one Kafka message holds ({MAX_VALUE})"
                )
            activity = peopleai.read_line(line)
        except BadLine as exc:
            headers: list[tuple[str, str | bytes | None]] = [
                ("__connect.errors.connector.name", self.name.encode()),
                ("__connect.errors.stage", b"VALUE_CONVERTER"),
                ("__connect.errors.exception.class.name", b"connector.codec.DecodeError"),
                ("__connect.errors.exception.message", str(exc).encode()[:1024]),
                ("__activity.error.reason", b"decode_error"),
                ("__activity.error.destination", b"peopleai.activities"),
                ("__activity.source.job_id", job.id.encode()),
                ("__activity.source.fragment", str(fragment).encode()),
                ("__activity.source.line", str(index).encode()),
            ]
            await self._produce(self.s.dead_letter_topic, None, line[:MAX_VALUE], headers)
            counts["bad"] += 1
            return
        if activity.activity_day is not None and activity.activity_day < start:
            counts["before_start_date"] += 1
            return
        if not working.is_new(activity.uid, activity.ingested):
            counts["already_produced"] += 1
            return
        await self._produce(self.s.topic, activity.uid.encode(), activity.value, None)
        working.produced(activity.uid, activity.ingested, max(activity.ingest_day or fallback_day, floor_day))
        counts["produced"] += 1

    async def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]] | None,
    ) -> None:
        producer = self.producer
        assert producer is not None
        for _ in range(100_000):  # the producer's queue is full: wait for the broker to take some
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                producer.poll(0)
                return
            except BufferError:
                producer.poll(0)
                await asyncio.sleep(0.01)
        raise RequestFailed("the Kafka producer's queue stayed full")

    # --- helpers -------------------------------------------------------------------------------------------

    def _lag(self, cursor: Cursor) -> None:
        at = cursor.exported_at
        if not at:
            d = cursor.next_day
            at = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        self.m.cursor_lag.set(max(0.0, time.time() - at))

    async def _sleep(self, seconds: float) -> None:
        """Wait, or less if the process stops."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return
        raise Stopped()

    async def _beat(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(1.0)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KafkaException):
        return f"Kafka: {exc.args[0].str()}"
    return str(exc)


def _excerpt(body: bytes) -> str:
    return body[:200].decode(errors="replace")
