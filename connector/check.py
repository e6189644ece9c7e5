"""`activity-connector check`: validate a configuration file and print the effective configuration.

Validation goes as far as it can without a broker: every Kafka client the run would build is built (and
closed at once), so librdkafka itself checks its properties. `--connect` then reaches Kafka and each
destination, writing nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from connector.codec import make_decoder, schema_of
from connector.codec.registry import RegistryAuthError, tls_context
from connector.config import effective, load_settings, masked_url
from connector.delivery.proxy import proxy_for
from connector.destinations import for_sink, mapper_for
from connector.errors import ConfigError
from connector.kafka import admin_config, validate_clients
from connector.redact import redact


def check(path: Path, connect: bool) -> int:
    settings = load_settings(path)
    for i, sink in enumerate(settings.sinks):
        destination, _ = for_sink(sink, i)
        mapper_for(sink, destination, i)
        try:  # the decoder the run would build (a reader schema fastavro refuses, ...)
            make_decoder(sink.format, sink.schema, schema_of(destination.schema_file))
        except Exception as exc:
            raise ConfigError(f"sinks[{i}].schema", f"{type(exc).__name__}: {exc}") from None
        proxy_for(sink.destination.url, f"sinks[{i}].destination.url")  # one the run would refuse
        registry = sink.schema_registry or {}
        if any(key.startswith("ssl.") for key in registry):
            try:  # the TLS files load together (a key that is not the certificate's, a wrong password)
                tls_context(registry)
            except RegistryAuthError as exc:
                raise ConfigError(f"sinks[{i}].schema_registry", str(exc)) from None
    validate_clients(settings)
    # Masked by where secrets stand, then wherever a secret's value appears (in a URL, an option...).
    print(redact(json.dumps(effective(settings), indent=2), (s.reveal() for s in settings.secret_values)))
    if not connect:
        return 0
    failures = 0
    try:
        metadata = AdminClient(admin_config(settings.kafka)).list_topics(timeout=10)
        print(f"kafka: reachable ({len(metadata.brokers)} brokers)")
    except KafkaException as exc:
        print(f"kafka: NOT reachable: {exc.args[0].str() if exc.args else exc}", file=sys.stderr)
        failures += 1
    secrets = [s.reveal() for s in settings.secret_values]
    for sink in settings.sinks:
        shown = masked_url(sink.destination.url)
        try:
            answer = httpx.get(sink.destination.url, timeout=10)
            print(f"{sink.name}: {shown} answered HTTP {answer.status_code}")
        except httpx.HTTPError as exc:
            problem = redact(f"{type(exc).__name__}: {exc}", secrets)
            print(f"{sink.name}: {shown} NOT reachable ({problem})", file=sys.stderr)
            failures += 1
    return 1 if failures else 0
