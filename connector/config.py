"""The YAML configuration file → typed, validated settings.

`${VAR}` and `${VAR:-default}` expand from the environment, `{secret_file: PATH}` reads a mounted secret,
unknown keys are errors, and every error names the key it is about (exit status 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from connector.errors import ConfigError
from connector.units import parse_duration, parse_size

T = TypeVar("T")


class Secret:
    """A string that never shows itself in logs, reprs or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


AuthType = Literal["none", "bearer", "api_key", "header", "oauth2_client_credentials"]


@dataclass(frozen=True, slots=True)
class AuthSettings:
    type: AuthType = "none"
    token: Secret | None = None  # bearer
    header: str = ""  # api_key / header: the header's name
    value: Secret | None = None  # api_key / header: the header's value
    token_url: str = ""  # oauth2_client_credentials
    client_id: str = ""
    client_secret: Secret | None = None
    scope: str = ""


@dataclass(frozen=True, slots=True)
class DestinationSettings:
    type: str
    url: str
    auth: AuthSettings
    options: Mapping[str, Any] = field(default_factory=dict)  # destination-specific, checked by its module


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_records: int | None = None  # None: the destination's cap
    max_bytes: int = 4 * 1024 * 1024
    max_wait: float = 1.0
    max_buffered_bytes: int = 6 * 1024 * 1024  # pause partitions past this many buffered bytes


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = 10
    initial_backoff: float = 0.5
    max_backoff: float = 60.0


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    concurrency: int = 4
    timeout: float = 30.0
    retry: RetrySettings = field(default_factory=RetrySettings)
    requests_per_second: float | None = None


Format = Literal["json", "avro", "avro-confluent"]
OnError = Literal["dead_letter", "fail"]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How to create a topic that is missing (as Kafka Connect's errors.deadletterqueue.topic.*)."""

    partitions: int = 1
    replication_factor: int = -1  # -1: the broker's default.replication.factor
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SinkSettings:
    name: str
    topics: tuple[str, ...]
    topic_pattern: str | None
    group_id: str
    consumer: Mapping[str, Any]
    format: Format
    schema: Path | None
    schema_registry: Mapping[str, str] | None  # the Confluent client's property names, verbatim
    destination: DestinationSettings
    batch: BatchSettings
    delivery: DeliverySettings
    dead_letter_topic: str
    on_error: OnError
    mapping: Mapping[str, Any] | None = None  # target field -> source (connector.codec.mapping)
    max_replays: int = 3  # `dlq replay` skips a dead letter replayed this many times already
    dead_letter_create: TopicSpec | None = None  # create the dead-letter topic when missing

    @property
    def subscription(self) -> list[str]:
        return [self.topic_pattern] if self.topic_pattern else list(self.topics)


ActivityType = Literal["all", "email", "meeting", "call"]


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """A `peopleai.activities` source: People.ai export jobs into a Kafka topic, exactly once."""

    name: str
    type: str
    url: str
    auth: AuthSettings
    activity_type: ActivityType
    start_date: date
    interval: float
    topic: str
    state_topic: str
    dead_letter_topic: str
    snapshot_window: int = 30  # days per snapshot export job (the API allows up to 365)
    download_concurrency: int = 2  # fragments of one job downloaded at once
    delivery: DeliverySettings = field(default_factory=DeliverySettings)


@dataclass(frozen=True, slots=True)
class RestartSettings:
    """How a failed sink or source is restarted, alone, while the others go on."""

    initial_backoff: float = 5.0
    max_backoff: float = 300.0
    max_restarts: int | None = None  # None: for ever (a 401 may be fixed on the API's side); 0: never


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: Mapping[str, Any]
    metrics_host: str
    metrics_port: int
    shutdown_timeout: float
    sinks: tuple[SinkSettings, ...]
    sources: tuple[SourceSettings, ...] = ()
    base_dir: Path = Path(".")
    log_format: str = "text"
    log_level: str = "info"
    # Every secret of the file (credentials, ${VAR}s and secret_files in secret places, header values):
    # masked wherever it appears in what `check` prints, and in every log line.
    secret_values: tuple[Secret, ...] = ()
    restart: RestartSettings = field(default_factory=RestartSettings)


# `schema_registry:` takes these of the Confluent client's properties besides `url`.
REGISTRY_KEYS = (
    "basic.auth.user.info",
    "bearer.auth.token",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
)

# librdkafka properties the connector sets itself: at-least-once and its metrics depend on them.
OWNED_KAFKA_KEYS = {
    "enable.auto.commit": "offsets are committed only once settled (delivered or dead-lettered)",
    "enable.auto.offset.store": "offsets are committed only once settled (delivered or dead-lettered)",
    "group.id": "set it per sink with sinks[].group_id",
    "enable.idempotence": "dead letters are written idempotently",
    "acks": "dead letters are acknowledged by every in-sync replica (acks=all)",
    "logger": "librdkafka's log lines go through the connector's logging",
    "error_cb": "the connector follows Kafka's health itself",
    "stats_cb": "the connector reads librdkafka's statistics itself",
    "on_commit": "the connector follows its commits itself",
    "transactional.id": "dead letters are written by an idempotent, not a transactional, producer",
}


def _owned(section: Mapping[str, Any], key: str) -> None:
    for name in section:
        why = OWNED_KAFKA_KEYS.get(name)
        if why is not None:
            raise ConfigError(f"{key}.{name}", f"set by the connector and cannot be changed: {why}")


# --- environment expansion -------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, key: str, env: Mapping[str, str], base_dir: Path, secrets: list[str]) -> Any:
    """`${VAR}` and `{secret_file: PATH}` expanded; what is secret among them is added to `secrets`."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                found = env[name]
            elif default is not None:
                found = default
            else:
                raise ConfigError(key, f"environment variable {name} is not set and has no default")
            if _SECRET_VARS.search(name) or _secret_place(key):
                secrets.append(found)
            return found

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        if set(value) == {"secret_file"}:
            path = Path(str(_expand(value["secret_file"], key, env, base_dir, secrets)))
            path = path if path.is_absolute() else base_dir / path
            try:
                content = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(key, f"cannot read secret_file {path}: {exc.strerror}") from None
            secrets.append(content)
            return content
        return {
            k: _expand(v, f"{key}.{k}" if key else str(k), env, base_dir, secrets) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, f"{key}[{i}]", env, base_dir, secrets) for i, v in enumerate(value)]
    return value


def _plain_secrets(value: Any, key: str, secrets: list[str]) -> None:
    """Secrets written into the file itself (not through ${VAR} or secret_file), by where they stand."""
    if isinstance(value, dict):
        for k, v in value.items():
            _plain_secrets(v, f"{key}.{k}" if key else str(k), secrets)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain_secrets(v, f"{key}[{i}]", secrets)
    elif isinstance(value, str | int) and not isinstance(value, bool) and _secret_place(key):
        secrets.append(str(value))


# --- typed readers ------------------------------------------------------------------------------------------


class _Section:
    """One mapping of the file; every read names its full key, and leftovers are unknown keys."""

    def __init__(self, data: object, key: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(key, "must be a mapping")
        self.data: dict[str, Any] = data
        self.key = key
        self.seen: set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def raw(self, name: str, default: Any = None) -> Any:
        self.seen.add(name)
        return self.data.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.data

    def section(self, name: str) -> _Section:
        return _Section(self.raw(name), self.path(name))

    def typed(self, name: str, convert: Callable[[Any], T], default: T) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(self.path(name), str(exc)) from None

    def string(self, name: str, default: str | None = None) -> str:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise ConfigError(self.path(name), "is required")
            return default
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(self.path(name), f"must be a string, not {type(value).__name__}")
        return str(value)

    def integer(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.raw(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(self.path(name), f"must be an integer >= {minimum}, got {value!r}")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in options:
            raise ConfigError(self.path(name), f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(self.path(unknown[0]), "unknown key")


def _http_url(section: _Section, key: str) -> str:
    """An http(s) URL with a host and, if given, a port that is a number (a typo such as `:443o` was a
    traceback at the first request). The value is shown without its credentials."""
    url = section.string(key).rstrip("/")
    shown = masked_url(url)
    if not re.match(r"^https?://", url):
        raise ConfigError(section.path(key), f"must start with http:// or https://, got {shown!r}")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(section.path(key), f"is not a valid URL: {shown!r}") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(section.path(key), f"the port must be a number from 1 to 65535, got {shown!r}")
    if not parts.hostname:
        raise ConfigError(section.path(key), f"has no host: {shown!r}")
    return url


def _auth(section: _Section) -> AuthSettings:
    kind = section.choice(
        "type", ("none", "bearer", "api_key", "header", "oauth2_client_credentials"), "none"
    )

    def secret(name: str) -> Secret:
        return Secret(section.string(name))

    auth: AuthSettings
    if kind == "bearer":
        auth = AuthSettings(type="bearer", token=secret("token"))
    elif kind == "api_key":
        auth = AuthSettings(
            type="api_key", header=section.string("header", "X-Api-Key"), value=secret("value")
        )
    elif kind == "header":
        auth = AuthSettings(type="header", header=section.string("name"), value=secret("value"))
    elif kind == "oauth2_client_credentials":
        auth = AuthSettings(
            type="oauth2_client_credentials",
            token_url=_http_url(section, "token_url"),
            client_id=section.string("client_id"),
            client_secret=secret("client_secret"),
            scope=section.string("scope", ""),
        )
    else:
        auth = AuthSettings()
    section.finish()
    return auth


def _sink(section: _Section, index: int, base_dir: Path) -> SinkSettings:
    name = section.string("name")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(section.path("name"), "use letters, digits, '.', '_' and '-' only")
    topics_raw = section.raw("topics")
    pattern = section.raw("topic_pattern")
    if (topics_raw is None) == (pattern is None):
        raise ConfigError(section.path("topics"), "set exactly one of topics or topic_pattern")
    topics: tuple[str, ...] = ()
    if topics_raw is not None:
        if (
            not isinstance(topics_raw, list)
            or not topics_raw
            or not all(isinstance(t, str) for t in topics_raw)
        ):
            raise ConfigError(section.path("topics"), "must be a non-empty list of topic names")
        topics = tuple(topics_raw)
    if pattern is not None:
        if not isinstance(pattern, str):
            raise ConfigError(section.path("topic_pattern"), "must be a string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(section.path("topic_pattern"), f"not a regular expression: {exc}") from None
        # librdkafka treats a subscription starting with ^ as a regex.
        pattern = pattern if pattern.startswith("^") else "^" + pattern
    consumer = section.section("consumer").data
    section.seen.add("consumer")
    _owned(consumer, section.path("consumer"))

    fmt = section.choice("format", ("json", "avro", "avro-confluent"), "json")
    schema_raw = section.raw("schema")
    schema = None
    if schema_raw is not None:
        schema = Path(str(schema_raw))
        schema = schema if schema.is_absolute() else base_dir / schema
        if not schema.is_file():
            raise ConfigError(section.path("schema"), f"file not found: {schema}")
    if fmt == "avro" and schema is None:
        raise ConfigError(section.path("schema"), "format avro needs the writer schema (.avsc)")
    registry_props: dict[str, str] | None = None
    if fmt == "avro-confluent":
        registry = section.section("schema_registry")
        registry_props = {"url": _http_url(registry, "url")}
        for key in REGISTRY_KEYS:
            if registry.has(key):
                registry_props[key] = registry.string(key)
        user_info = registry_props.get("basic.auth.user.info")
        if user_info is not None and ":" not in user_info:
            raise ConfigError(registry.path("basic.auth.user.info"), "must be USER:PASSWORD")
        for key in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
            if key in registry_props:
                location = Path(registry_props[key])
                location = location if location.is_absolute() else base_dir / location
                if not location.is_file():
                    raise ConfigError(registry.path(key), f"file not found: {location}")
                registry_props[key] = str(location)
        if ("ssl.certificate.location" in registry_props) != ("ssl.key.location" in registry_props):
            raise ConfigError(
                registry.path("ssl.key.location"), "give both ssl.certificate.location and ssl.key.location"
            )
        registry.finish()
    elif section.has("schema_registry"):
        raise ConfigError(section.path("schema_registry"), "only used with format avro-confluent")

    dest = section.section("destination")
    dest_type = dest.string("type")
    url = _http_url(dest, "url")
    auth_section = dest.section("auth")
    auth = _auth(auth_section)
    options = {k: v for k, v in dest.data.items() if k not in ("type", "url", "auth")}
    destination = DestinationSettings(type=dest_type, url=url, auth=auth, options=options)

    b = section.section("batch")
    max_records = b.raw("max_records")
    if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
        raise ConfigError(b.path("max_records"), f"must be an integer >= 1, got {max_records!r}")
    max_bytes = b.typed("max_bytes", parse_size, 4 * 1024 * 1024)
    batch = BatchSettings(
        max_records=max_records,
        max_bytes=max_bytes,
        max_wait=b.typed("max_wait", parse_duration, 1.0),
        # 6 MiB of record values is about 45 MiB as Python objects (200-byte records): with librdkafka's
        # prefetch sized from it, one sink stays under 150 MiB whatever the backlog.
        max_buffered_bytes=b.typed("max_buffered_bytes", parse_size, max(6 * 1024 * 1024, max_bytes)),
    )
    b.finish()
    if batch.max_buffered_bytes < batch.max_bytes:
        raise ConfigError(b.path("max_buffered_bytes"), "must be at least batch.max_bytes")

    delivery = _delivery(section.section("delivery"), timeout=30.0)

    dl = section.section("dead_letter")
    dead_letter_topic = dl.string("topic", f"{name}.dlq")
    max_replays = dl.integer("max_replays", 3)
    create = _topic_spec(dl)
    dl.finish()
    on_error = section.choice("on_error", ("dead_letter", "fail"), "dead_letter")
    mapping = section.raw("mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise ConfigError(section.path("mapping"), "must be a mapping of target fields to their sources")
    group_id = section.string("group_id", f"activity-connector.{name}")
    section.finish()
    return SinkSettings(
        name=name,
        topics=topics,
        topic_pattern=pattern,
        group_id=group_id,
        consumer=consumer,
        format=fmt,  # type: ignore[arg-type]
        schema=schema,
        schema_registry=registry_props,
        destination=destination,
        batch=batch,
        delivery=delivery,
        dead_letter_topic=dead_letter_topic,
        on_error=on_error,  # type: ignore[arg-type]
        mapping=mapping,
        max_replays=max_replays,
        dead_letter_create=create,
    )


def _topic_spec(dl: _Section) -> TopicSpec | None:
    """`create: true` with `partitions`, `replication_factor` and topic `config`: create when missing."""
    create = dl.raw("create", False)
    if not isinstance(create, bool):
        raise ConfigError(dl.path("create"), f"must be true or false, got {create!r}")
    partitions = dl.integer("partitions", 1)
    replication = dl.integer("replication_factor", -1, minimum=-1)
    config = dl.raw("config", {})
    if partitions < 1:
        raise ConfigError(dl.path("partitions"), "must be at least 1")
    if replication == 0:
        raise ConfigError(dl.path("replication_factor"), "must be at least 1 (or -1: the broker's default)")
    if not isinstance(config, dict):
        raise ConfigError(dl.path("config"), "must be a mapping of topic configs (retention.ms: ...)")
    if not create:
        for key in ("partitions", "replication_factor", "config"):
            if dl.has(key):
                raise ConfigError(dl.path(key), "is used only with create: true")
        return None
    return TopicSpec(partitions, replication, {str(k): str(v) for k, v in config.items()})


def _delivery(d: _Section, timeout: float) -> DeliverySettings:
    """A `delivery:` section (sinks and sources): timeout, retry, rate limit, concurrency."""
    r = d.section("retry")
    retry = RetrySettings(
        max_attempts=r.integer("max_attempts", 10),
        initial_backoff=r.typed("initial_backoff", parse_duration, 0.5),
        max_backoff=r.typed("max_backoff", parse_duration, 60.0),
    )
    r.finish()
    rl = d.section("rate_limit")
    rps = rl.typed("requests_per_second", float, 0.0) or None
    rl.finish()
    delivery = DeliverySettings(
        concurrency=d.integer("concurrency", 4),
        timeout=d.typed("timeout", parse_duration, timeout),
        retry=retry,
        requests_per_second=rps,
    )
    d.finish()
    return delivery


SNAPSHOT_MAX_DAYS = 365  # People.ai: the longest snapshot export


def _source(section: _Section) -> SourceSettings:
    name = section.string("name")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(section.path("name"), "use letters, digits, '.', '_' and '-' only")
    kind = section.choice("type", ("peopleai.activities",), "peopleai.activities")
    url = _http_url(section, "url")
    auth = _auth(section.section("auth"))
    if auth.type != "oauth2_client_credentials":
        raise ConfigError(section.path("auth.type"), "People.ai needs oauth2_client_credentials")
    raw_start = section.raw("start_date")
    try:
        start = raw_start if isinstance(raw_start, date) else date.fromisoformat(str(raw_start))
    except ValueError:
        raise ConfigError(
            section.path("start_date"), f"must be a date yyyy-MM-dd, got {raw_start!r}"
        ) from None
    if start > datetime.now(UTC).date():
        raise ConfigError(section.path("start_date"), "is in the future")
    window = section.typed("snapshot_window", parse_duration, 30 * 86400.0)
    days = int(window // 86400)
    if days < 1 or days > SNAPSHOT_MAX_DAYS or window % 86400:
        raise ConfigError(section.path("snapshot_window"), f"must be whole days, 1d to {SNAPSHOT_MAX_DAYS}d")
    d = section.section("delivery")
    delivery = _delivery(d, timeout=60.0)
    if delivery.retry.initial_backoff < 0.01:
        raise ConfigError(d.path("retry.initial_backoff"), "must be at least 10ms (failures must not loop)")
    interval = section.typed("interval", parse_duration, 3600.0)
    if interval < 1.0:
        raise ConfigError(section.path("interval"), "must be at least 1s")
    dl = section.section("dead_letter")
    dead_letter_topic = dl.string("topic", f"{name}.dlq")
    dl.finish()
    source = SourceSettings(
        name=name,
        type=kind,
        url=url,
        auth=auth,
        activity_type=section.choice("activity_type", ("all", "email", "meeting", "call"), "all"),  # type: ignore[arg-type]
        start_date=start,
        interval=interval,
        topic=section.string("topic"),
        state_topic=section.string("state_topic", "activity-connector.state"),
        dead_letter_topic=dead_letter_topic,
        snapshot_window=days,
        download_concurrency=section.integer("download_concurrency", 2),
        delivery=delivery,
    )
    section.finish()
    return source


def parse_settings(
    data: object, env: Mapping[str, str] | None = None, base_dir: Path = Path(".")
) -> Settings:
    """Settings from an already loaded YAML document."""
    env = os.environ if env is None else env
    found: list[str] = []
    _plain_secrets(data, "", found)
    root = _Section(_expand(data, "", env, base_dir, found), "")
    kafka = root.section("kafka").data
    root.seen.add("kafka")
    if "bootstrap.servers" not in kafka:
        raise ConfigError("kafka.bootstrap.servers", "is required")
    _owned(kafka, "kafka")
    logs = root.section("logging")
    log_format = logs.choice("format", ("json", "text"), "text")
    log_level = logs.choice("level", ("debug", "info", "warning", "error"), "info")
    logs.finish()
    metrics = root.section("metrics")
    listen = metrics.string("listen", "0.0.0.0:9464")
    metrics.finish()
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("metrics.listen", f"must be HOST:PORT, got {listen!r}")
    shutdown_timeout = root.typed("shutdown_timeout", parse_duration, 30.0)
    restart = _restart(root.section("restart"))
    sources_raw = root.raw("sources", [])
    if not isinstance(sources_raw, list):
        raise ConfigError("sources", "must be a list")
    sources = tuple(_source(_Section(s, f"sources[{i}]")) for i, s in enumerate(sources_raw))
    sinks_raw = root.raw("sinks", [] if sources else None)
    if not isinstance(sinks_raw, list) or not (sinks_raw or sources):
        raise ConfigError("sinks", "must be a non-empty list (or give sources)")
    sinks = tuple(_sink(_Section(s, f"sinks[{i}]"), i, base_dir) for i, s in enumerate(sinks_raw))
    names = [s.name for s in sinks] + [s.name for s in sources]
    for i, n in enumerate(names):
        if n in names[:i]:
            where = f"sinks[{i}]" if i < len(sinks) else f"sources[{i - len(sinks)}]"
            raise ConfigError(
                f"{where}.name", f"duplicate name {n!r} (sinks and sources share the sink label)"
            )
    # Static members of one group need distinct ids: the second would fence the first, and both exit.
    static = [
        (s.group_id, s.consumer.get("group.instance.id", kafka.get("group.instance.id"))) for s in sinks
    ]
    for i, (group, instance) in enumerate(static):
        if instance is not None and (group, instance) in static[:i]:
            raise ConfigError(
                f"sinks[{i}].group_id",
                f"{group!r} is also another sink's group, with the same group.instance.id: give each sink "
                "its own group_id",
            )
    statistics = {**kafka, **{k: v for s in sinks for k, v in s.consumer.items()}}.get(
        "statistics.interval.ms"
    )
    if statistics is not None and str(statistics).strip() in ("0", ""):
        raise ConfigError(
            "kafka.statistics.interval.ms", "must be above 0: consumer lag and Kafka health need it"
        )
    root.finish()
    return Settings(
        kafka={k: str(v) if not isinstance(v, str) else v for k, v in kafka.items()},
        metrics_host=host,
        metrics_port=int(port),
        shutdown_timeout=shutdown_timeout,
        sinks=sinks,
        sources=sources,
        base_dir=base_dir,
        log_format=log_format,
        log_level=log_level,
        # Short values would mask every occurrence of a common word; they are masked where they stand.
        secret_values=tuple(Secret(v) for v in dict.fromkeys(found) if len(v) >= 4),
        restart=restart,
    )


def _restart(section: _Section) -> RestartSettings:
    initial = section.typed("initial_backoff", parse_duration, 5.0)
    maximum = section.typed("max_backoff", parse_duration, 300.0)
    if initial < 0.1:
        raise ConfigError(section.path("initial_backoff"), "must be at least 100ms (restarts must not loop)")
    if maximum < initial:
        raise ConfigError(section.path("max_backoff"), "must not be below initial_backoff")
    limit = section.raw("max_restarts", None)
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ConfigError(
            section.path("max_restarts"), f"must be an integer >= 0 (or absent: for ever), got {limit!r}"
        )
    section.finish()
    return RestartSettings(initial, maximum, limit)


def load_settings(path: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from a YAML file; relative paths in it resolve against the file's folder."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    return parse_settings(data, env, path.resolve().parent)


def effective(settings: Settings) -> dict[str, Any]:
    """The effective configuration in the file's own keys, every secret as ***: `check` prints it, and
    what it prints loads back as a configuration file."""

    def auth(a: AuthSettings) -> dict[str, Any]:
        out: dict[str, Any] = {"type": a.type}
        if a.type == "bearer":
            out["token"] = "***"
        elif a.type == "api_key":
            out.update(header=a.header, value="***")
        elif a.type == "header":
            out.update(name=a.header, value="***")
        elif a.type == "oauth2_client_credentials":
            out.update(token_url=a.token_url, client_id=a.client_id, client_secret="***")
            if a.scope:
                out["scope"] = a.scope
        return out

    def kafka_props(props: Mapping[str, Any]) -> dict[str, Any]:
        return {k: "***" if _SECRET_KEYS.search(str(k)) else v for k, v in props.items()}

    def sink(s: SinkSettings) -> dict[str, Any]:
        out: dict[str, Any] = {"name": s.name}
        if s.topic_pattern:
            out["topic_pattern"] = s.topic_pattern
        else:
            out["topics"] = list(s.topics)
        out.update(group_id=s.group_id, consumer=kafka_props(s.consumer), format=s.format)
        if s.schema is not None:
            out["schema"] = str(s.schema)
        if s.schema_registry is not None:
            registry = {k: "***" if _SECRET_KEYS.search(k) else v for k, v in s.schema_registry.items()}
            out["schema_registry"] = {**registry, "url": masked_url(s.schema_registry["url"])}
        d = s.destination
        options = dict(d.options)
        if isinstance(options.get("headers"), dict):
            options["headers"] = dict.fromkeys(options["headers"], "***")
        out["destination"] = {"type": d.type, "url": masked_url(d.url), "auth": auth(d.auth), **options}
        b, r = s.batch, s.delivery.retry
        batch: dict[str, Any] = {"max_bytes": b.max_bytes, "max_wait": b.max_wait}
        if b.max_records is not None:
            batch["max_records"] = b.max_records
        batch["max_buffered_bytes"] = b.max_buffered_bytes
        out["batch"] = batch
        delivery: dict[str, Any] = {
            "concurrency": s.delivery.concurrency,
            "timeout": s.delivery.timeout,
            "retry": {
                "max_attempts": r.max_attempts,
                "initial_backoff": r.initial_backoff,
                "max_backoff": r.max_backoff,
            },
        }
        if s.delivery.requests_per_second:
            delivery["rate_limit"] = {"requests_per_second": s.delivery.requests_per_second}
        out["delivery"] = delivery
        out.update(
            dead_letter={"topic": s.dead_letter_topic, "max_replays": s.max_replays}, on_error=s.on_error
        )
        if s.mapping is not None:
            out["mapping"] = s.mapping
        return out

    def source(s: SourceSettings) -> dict[str, Any]:
        r = s.delivery.retry
        delivery: dict[str, Any] = {
            "timeout": s.delivery.timeout,
            "retry": {
                "max_attempts": r.max_attempts,
                "initial_backoff": r.initial_backoff,
                "max_backoff": r.max_backoff,
            },
        }
        if s.delivery.requests_per_second:
            delivery["rate_limit"] = {"requests_per_second": s.delivery.requests_per_second}
        return {
            "name": s.name,
            "type": s.type,
            "url": masked_url(s.url),
            "auth": auth(s.auth),
            "activity_type": s.activity_type,
            "start_date": s.start_date.isoformat(),
            "interval": s.interval,
            "snapshot_window": f"{s.snapshot_window}d",
            "download_concurrency": s.download_concurrency,
            "topic": s.topic,
            "state_topic": s.state_topic,
            "dead_letter": {"topic": s.dead_letter_topic},
            "delivery": delivery,
        }

    out: dict[str, Any] = {
        "kafka": kafka_props(settings.kafka),
        "metrics": {"listen": f"{settings.metrics_host}:{settings.metrics_port}"},
        "shutdown_timeout": settings.shutdown_timeout,
        "logging": {"format": settings.log_format, "level": settings.log_level},
        "sinks": [sink(s) for s in settings.sinks],
    }
    if settings.sources:
        out["sources"] = [source(s) for s in settings.sources]
    return out


# librdkafka and Schema Registry properties that hold credentials.
_SECRET_KEYS = re.compile(
    r"(password|secret|token|sasl\.oauthbearer\.config|key\.pem|basic\.auth\.user\.info)", re.IGNORECASE
)
# Environment variables whose names say they hold a credential.
_SECRET_VARS = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL|PRIVATE)", re.IGNORECASE)
_AUTH_SECRETS = ("token", "value", "client_secret")


def _secret_place(key: str) -> bool:
    """Whether the value at this key of the file is a credential."""
    parent, _, last = key.rpartition(".")
    if parent.endswith(".auth"):
        return last in _AUTH_SECRETS
    if parent.endswith(".headers"):
        return True  # an HTTP header a destination sends (Authorization, X-Api-Key, ...)
    return bool(_SECRET_KEYS.search(key))


_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
_URL_QUERY_VALUES = re.compile(r"(?<=[?&])([^=&#\s]+)=[^&#\s]*")


def masked_url(url: str) -> str:
    """A URL without the credentials or query values it may carry."""
    return _URL_QUERY_VALUES.sub(r"\1=***", _URL_CREDENTIALS.sub("***@", url))
