from pathlib import Path
from typing import Any

import pytest

from connector.config import Secret, effective, parse_settings
from connector.errors import ConfigError
from connector.units import parse_duration, parse_size


def test_durations_and_sizes() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2s") == 2.0
    assert parse_duration("5m") == 300.0
    assert parse_duration(3) == 3.0
    assert parse_size("512KiB") == 512 * 1024
    assert parse_size("4MiB") == 4 * 1024 * 1024
    assert parse_size("5MB") == 5_000_000
    for bad in ("fast", "-1s", "2 weeks"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("lots")


def _minimal(**sink: Any) -> dict[str, Any]:
    base = {
        "name": "uxr",
        "topics": ["a"],
        "destination": {
            "type": "rally_uxr.activities",
            "url": "http://x/api/public/v1",
            "auth": {"type": "bearer", "token": "${TOKEN}"},
        },
    }
    base.update(sink)
    return {"kafka": {"bootstrap.servers": "127.0.0.1:9092"}, "sinks": [base]}


def test_env_expansion_defaults_and_secrets(tmp_path: Path) -> None:
    s = parse_settings(_minimal(), env={"TOKEN": "s3cret"})
    sink = s.sinks[0]
    assert sink.destination.auth.token == Secret("s3cret")
    assert sink.group_id == "activity-connector.uxr"
    assert sink.dead_letter_topic == "uxr.dlq"
    assert sink.batch.max_wait == 1.0 and sink.delivery.concurrency == 4
    shown = effective(s)
    assert "s3cret" not in repr(shown) and "s3cret" not in repr(sink)
    assert shown["sinks"][0]["destination"]["auth"]["token"] == "***"

    (tmp_path / "tok").write_text("from-file\n")
    doc = _minimal()
    doc["sinks"][0]["destination"]["auth"]["token"] = {"secret_file": "tok"}
    s2 = parse_settings(doc, env={}, base_dir=tmp_path)
    token = s2.sinks[0].destination.auth.token
    assert token is not None and token.reveal() == "from-file"

    doc = _minimal()
    doc["sinks"][0]["destination"]["auth"]["token"] = "${MISSING:-fallback}"
    token = parse_settings(doc, env={}).sinks[0].destination.auth.token
    assert token is not None and token.reveal() == "fallback"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"batch": {"max_recrods": 5}}, "sinks[0].batch.max_recrods"),
        ({"batch": {"max_wait": "soon"}}, "sinks[0].batch.max_wait"),
        ({"format": "xml"}, "sinks[0].format"),
        ({"format": "avro"}, "sinks[0].schema"),
        ({"delivery": {"concurrency": 0}}, "sinks[0].delivery.concurrency"),
        ({"on_error": "ignore"}, "sinks[0].on_error"),
        ({"topic_pattern": "^x"}, "sinks[0].topics"),
    ],
)
def test_errors_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_minimal(**change), env={"TOKEN": "t"})
    assert info.value.key == key


def test_missing_variable_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_minimal(), env={})
    assert "TOKEN" in str(info.value) and info.value.key == "sinks[0].destination.auth.token"


def test_unknown_top_level_key() -> None:
    doc = _minimal()
    doc["sinkz"] = []
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, env={"TOKEN": "t"})
    assert info.value.key == "sinkz"


def test_a_schema_registry_section_leaves_the_sinks_name_and_defaults_alone() -> None:
    """A loop over the registry's keys reused `name`: every avro-confluent sink became `ssl.key.location`,
    with the default group id and dead-letter topic of that name, shared by every such deployment."""
    doc = _minimal()
    doc["sinks"][0] |= {"format": "avro-confluent", "schema_registry": {"url": "http://registry:8081"}}
    sink = parse_settings(doc, env={"TOKEN": "t"}).sinks[0]
    assert sink.name == "uxr"
    assert sink.group_id == "activity-connector.uxr" and sink.dead_letter_topic == "uxr.dlq"


def test_the_derived_prefetch_bounds_never_make_librdkafka_refuse_the_consumer() -> None:
    """The prefetch is sized from the buffer bound, but a raised message.max.bytes (the dead-letter producer
    needs it for records of a few MiB) or a huge bound must still give a consumer librdkafka accepts, and
    `check` must build the consumer exactly as `run` does."""
    from connector.kafka import consumer_config, validate_clients

    for kafka, batch in (
        ({"message.max.bytes": 10_000_000}, {}),
        ({"message.max.bytes": "10000000"}, {}),
        ({}, {"max_buffered_bytes": "16GiB"}),
    ):
        doc = _minimal(batch=batch)
        doc["kafka"].update(kafka)
        settings = parse_settings(doc, env={"TOKEN": "t"})
        validate_clients(settings)  # raised ConfigError before
        sink = settings.sinks[0]
        config = consumer_config(settings.kafka, "g", {}, sink.batch.max_buffered_bytes)
        assert int(config["fetch.max.bytes"]) >= int(kafka.get("message.max.bytes", 0))
        assert config["queued.max.messages.kbytes"] <= 2097151
    # What the user sets wins over what is derived.
    config = consumer_config(
        {"fetch.max.bytes": 5_000_000}, "g", {"queued.max.messages.kbytes": 4096}, 6 << 20
    )
    assert (config["fetch.max.bytes"], config["queued.max.messages.kbytes"]) == (5_000_000, 4096)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://host:443o/v1", "the port must be a number from 1 to 65535, got 'https://host:443o/v1'"),
        ("https://host:99999/v1", "the port must be a number from 1 to 65535"),
        ("https://host:0/v1", "the port must be a number from 1 to 65535"),
        ("https://[::1/v1", "is not a valid URL"),
        ("https:///v1", "has no host"),
        ("https://user:pa55word@host:x/v1", "got 'https://***@host:x/v1'"),
    ],
)
def test_a_url_typo_is_a_configuration_error_naming_the_key(url: str, problem: str) -> None:
    """`url: https://host:443o/v1` ended `check` and `run` in a traceback instead of exit 2."""
    doc = _minimal()
    doc["sinks"][0]["destination"]["url"] = url
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, env={"TOKEN": "t"})
    assert info.value.key == "sinks[0].destination.url"
    assert problem in info.value.problem and "pa55word" not in str(info.value)


def test_dead_letter_create_takes_partitions_replication_and_configs() -> None:
    from connector.config import TopicSpec

    doc = _minimal(
        dead_letter={"topic": "d", "create": True, "partitions": 3, "config": {"retention.ms": 60}}
    )
    assert parse_settings(doc, env={"TOKEN": "t"}).sinks[0].dead_letter_create == TopicSpec(
        3, -1, {"retention.ms": "60"}
    )
    assert parse_settings(_minimal(), env={"TOKEN": "t"}).sinks[0].dead_letter_create is None
    for bad, key in (
        ({"create": "yes"}, "sinks[0].dead_letter.create"),
        ({"create": True, "partitions": 0}, "sinks[0].dead_letter.partitions"),
        ({"create": True, "replication_factor": 0}, "sinks[0].dead_letter.replication_factor"),
        ({"create": True, "config": ["a"]}, "sinks[0].dead_letter.config"),
        ({"partitions": 3}, "sinks[0].dead_letter.partitions"),  # only with create: true
    ):
        with pytest.raises(ConfigError) as info:
            parse_settings(_minimal(dead_letter={"topic": "d", **bad}), env={"TOKEN": "t"})
        assert info.value.key == key, bad
