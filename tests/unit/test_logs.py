"""Log output: JSON lines with the sink from the context and topic/partition/import id from extra,
identical Kafka lines collapsed, secrets redacted as records are made."""

from __future__ import annotations

import asyncio
import json
import logging

from connector.logs import CollapseRepeats, JsonFormatter, SinkField, current_sink
from connector.redact import install_log_redaction, register


def _record(logger: logging.Logger, message: str, **extra: object) -> logging.LogRecord:
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None, extra=extra)


def test_json_lines_carry_the_sink_of_the_task_and_the_fields_given() -> None:
    logger = logging.getLogger("connector.test")
    lines: list[str] = []

    async def sink_task() -> None:
        current_sink.set("uxr")
        record = _record(logger, "import failed", import_id="i-1", topic="t", partition=3)
        SinkField().filter(record)
        lines.append(JsonFormatter().format(record))

    asyncio.run(sink_task())
    outside = _record(logger, "no sink here")
    SinkField().filter(outside)
    lines.append(JsonFormatter().format(outside))
    first, second = (json.loads(line) for line in lines)
    assert first["sink"] == "uxr" and first["import_id"] == "i-1" and first["partition"] == 3
    assert (
        first["level"] == "warning"
        and first["message"] == "import failed"
        and first["time"].endswith("+00:00")
    )
    assert "sink" not in second


def test_identical_kafka_lines_are_said_once_then_counted() -> None:
    logger = logging.getLogger("connector.kafka.test")
    collapse = CollapseRepeats(window=60)
    said = [collapse.filter(_record(logger, "1/1 brokers are down")) for _ in range(50)]
    assert said.count(True) == 1
    assert collapse.filter(_record(logger, "something else"))
    collapse_now = CollapseRepeats(window=0)
    collapse_now.filter(_record(logger, "down"))
    assert collapse_now.filter(_record(logger, "down"))  # past the window: said again


def test_the_collapse_filter_stays_bounded() -> None:
    logger = logging.getLogger("connector.kafka.test")
    collapse = CollapseRepeats(window=60)
    for i in range(10_000):
        collapse.filter(_record(logger, f"line {i}"))
    assert len(collapse._last) <= 256


def test_secrets_are_redacted_from_every_log_record() -> None:
    install_log_redaction()
    register(["Tk9-canary-Zz"])
    record = logging.getLogger("x").makeRecord(
        "x", logging.INFO, __file__, 1, "token %s", ("Tk9-canary-Zz",), None
    )
    assert record.getMessage() == "token ***"


def test_lines_differing_only_in_their_timings_are_one_line() -> None:
    logger = logging.getLogger("connector.kafka.test")
    collapse = CollapseRepeats(window=60)
    lines = [
        f"127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed (after {ms}ms in state CONNECT)"
        for ms in (0, 1, 5)
    ]
    assert [collapse.filter(_record(logger, line)) for line in lines] == [True, False, False]


def test_gzip_only_when_the_scraper_accepts_it() -> None:
    from connector.metrics import _accepts_gzip

    assert _accepts_gzip("gzip") and _accepts_gzip("deflate, gzip;q=0.5") and _accepts_gzip("*")
    assert not _accepts_gzip("gzip;q=0, identity") and not _accepts_gzip("identity") and not _accepts_gzip("")
