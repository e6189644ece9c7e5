"""Log output: one JSON object a line (or plain text), with the sink, topic, partition and import id as
fields; librdkafka's own lines routed through Python logging, repeats collapsed.

The sink comes from a context variable each sink sets in its own asyncio task, so every line logged on
its behalf (its requests, its import poller, librdkafka's callbacks inside its consume()) carries it
without being passed around. Topic, partition and import id come from `extra=` where a line has them.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections import OrderedDict
from datetime import UTC, datetime

import orjson

from connector.redact import SECRETS, format_exception

current_sink: contextvars.ContextVar[str | None] = contextvars.ContextVar("sink", default=None)

LEVELS = ("debug", "info", "warning", "error")
_FIELDS = ("topic", "partition", "import_id")
REPEAT_WINDOW = 5.0  # seconds during which an identical librdkafka/Kafka line is said once
KAFKA_LOGGER = "connector.kafka"  # librdkafka's lines and Kafka client errors


class SinkField(logging.Filter):
    """Puts the current sink on every record (None outside a sink)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "sink"):
            record.sink = current_sink.get()
        return True


# The parts of librdkafka's lines that change on every repeat of the same event.
_CHANGING = re.compile(r"\(after \d+ms[^)]*\)|\d+ms in state \w+|\d+ms")


class CollapseRepeats(logging.Filter):
    """A line repeating within REPEAT_WINDOW seconds is dropped; the next one said says how many were.

    A broker that is down makes librdkafka repeat the same error several times a second, each time with
    another "after Nms": lines are compared without those changing parts."""

    def __init__(self, window: float = REPEAT_WINDOW, size: int = 256) -> None:
        super().__init__()
        self._window = window
        self._size = size
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()  # line -> (when said, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = _CHANGING.sub("", message)
        now = time.monotonic()
        said = self._last.get(key)
        if said is not None:
            self._last.move_to_end(key)  # least recently seen lines are forgotten first
            if now - said[0] < self._window:
                self._last[key] = (said[0], said[1] + 1)
                return False
            if said[1]:
                record.msg, record.args = f"{message} (and {said[1]} more times)", None
        self._last[key] = (now, 0)
        if len(self._last) > self._size:
            self._last.popitem(last=False)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        sink = getattr(record, "sink", None)
        if sink is not None:
            line["sink"] = sink
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = record.exc_text or format_exception(record.exc_info)
        return SECRETS.redact(orjson.dumps(line, default=str).decode())


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = SECRETS.redact(super().format(record))
        sink = getattr(record, "sink", None)
        return text if sink is None else f"{text} [sink={sink}]"


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Configure the root logger once for the process (replacing any handler set before)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SinkField())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO: one line per request is noise at info level.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    kafka = logging.getLogger(KAFKA_LOGGER)
    if not any(isinstance(f, CollapseRepeats) for f in kafka.filters):
        kafka.addFilter(CollapseRepeats())
