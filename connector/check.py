"""`activity-connector check`: validate a configuration file and print it with secrets redacted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from confluent_kafka.admin import AdminClient

from connector.config import load_settings, redacted
from connector.destinations import for_sink


def check(path: Path, connect: bool) -> int:
    settings = load_settings(path)
    for i, sink in enumerate(settings.sinks):
        for_sink(sink, i)
    print(json.dumps(redacted(settings), indent=2, default=str))
    if not connect:
        return 0
    failures = 0
    try:
        metadata = AdminClient(dict(settings.kafka)).list_topics(timeout=10)
        print(f"kafka: reachable ({len(metadata.brokers)} brokers)")
    except Exception as exc:  # any failure here is reported, not raised: this is a diagnosis command
        print(f"kafka: NOT reachable ({type(exc).__name__})", file=sys.stderr)
        failures += 1
    for sink in settings.sinks:
        try:
            answer = httpx.get(sink.destination.url, timeout=10)
            print(f"{sink.name}: {sink.destination.url} answered HTTP {answer.status_code}")
        except httpx.HTTPError as exc:
            print(
                f"{sink.name}: {sink.destination.url} NOT reachable ({type(exc).__name__})", file=sys.stderr
            )
            failures += 1
    return 1 if failures else 0
