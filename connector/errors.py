"""The exception tree. Every error the connector raises on purpose derives from ConnectorError, and is
defined here (the modules that raise them import them from here).

ConnectorError
├── ConfigError            the configuration file or command line is wrong (exit 2)
├── DecodeError            a record's bytes do not decode (the record is dead-lettered: decode_error)
│   └── BadLine            a People.ai export line that is not an activity
├── MappingError           a record the mapping cannot build a destination record from (invalid_record)
├── SchemaPending          a record's writer schema is being fetched: the record waits for it
├── SchemaNotFound         the registry does not know a schema id (its records are dead-lettered)
├── RegistryError          the Schema Registry cannot be reached or answers 5xx (nothing dead-lettered)
├── NoAnswer               a request got no usable answer (connection, timeout, unreadable answer)
├── TokenEndpointError     the OAuth2 token endpoint failed in a passing way (the request is retried)
├── RequestFailed          a source's request got no usable answer within its attempts
├── ExportAnswerError      a People.ai answer of a shape the source does not know
├── JobFailed              a People.ai export job ended Failed or Canceled, or never ended
├── Stopped                the process is stopping: a source abandons its window
└── FatalError             the connector cannot go on safely (exit 1)
    ├── DestinationAuthError   the destination keeps refusing our credentials (401/403)
    ├── RegistryAuthError      the Schema Registry refuses our credentials
    ├── DeadLetterError        a dead-letter write failed, so the offsets behind it cannot be committed
    ├── ReplayError            `dlq replay` cannot go on
    └── StartupError           the process cannot start (e.g. its metrics port is taken)

Some also derive from the built-in exception their callers (or libraries) expect: MappingError and
ExportAnswerError from ValueError, SchemaNotFound from LookupError, TokenEndpointError from
httpx.TransportError (so an httpx auth flow's failure reads as a request that got no answer).
"""

from __future__ import annotations

from typing import Literal

import httpx


class ConnectorError(Exception):
    """Root of every error raised on purpose by the connector."""


class ConfigError(ConnectorError):
    """The configuration is invalid. The message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class DecodeError(ConnectorError):
    """A record's bytes could not be decoded; it is dead-lettered with reason `decode_error`."""


class BadLine(DecodeError, ValueError):
    """A line that is not a JSON object with a string uid: dead-lettered (decode_error)."""


class MappingError(ConnectorError, ValueError):
    """A record the mapping cannot build a destination record from; its message names the field."""


class SchemaPending(ConnectorError):
    """The record's writer schema is not known yet: it is being fetched; the record waits for it."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(f"schema id {schema_id} is being fetched")
        self.schema_id = schema_id


class SchemaNotFound(ConnectorError, LookupError):
    """The registry does not know this schema id."""


class RegistryError(ConnectorError):
    """The Schema Registry could not answer (unreachable, 5xx): the records are not at fault."""


NoAnswerWhy = Literal["connection", "timeout", "unreadable_answer"]


class NoAnswer(ConnectorError):
    """The request got no usable answer: `why` is connection, timeout or unreadable_answer."""

    def __init__(self, why: NoAnswerWhy, detail: str = "") -> None:
        super().__init__(f"{why}: {detail}" if detail else why)
        self.why: NoAnswerWhy = why


class TokenEndpointError(httpx.TransportError, ConnectorError):
    """The token endpoint failed in a way worth retrying (5xx, no answer). An httpx transport error, so
    the send stack retries the request as it would one that got no answer."""


class RequestFailed(ConnectorError):
    """A request got no usable answer within its attempts; the source retries its window later."""


class ExportAnswerError(ConnectorError, ValueError):
    """An answer of a shape the source does not know; the request is treated as failed and retried."""


class JobFailed(ConnectorError):
    """The export job ended Failed or Canceled (or never ended); the window is tried again later."""


class Stopped(ConnectorError):
    """The process is stopping: the window in progress is abandoned (its transaction aborted)."""


class FatalError(ConnectorError):
    """A sink or source cannot go on without risking loss; the process exits 1."""


class DestinationAuthError(FatalError):
    """The destination answered 401/403: nothing past this batch is committed."""


class RegistryAuthError(FatalError):
    """The registry refuses our credentials."""


class DeadLetterError(FatalError):
    """The dead-letter topic did not acknowledge a write."""


class ReplayError(FatalError):
    """The replay cannot go on (Kafka refuses, the topic is unreadable); what it committed stands."""


class StartupError(FatalError):
    """Something the process needs to start is not there; the message says what."""
