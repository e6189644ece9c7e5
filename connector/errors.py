"""The exception tree. Every error the connector raises on purpose derives from ConnectorError.

ConnectorError
├── ConfigError            the configuration file or command line is wrong (exit 2)
├── DecodeError            a record's bytes do not decode (connector.codec; the record is dead-lettered)
├── RegistryError          the Schema Registry cannot be reached or answers 5xx (nothing dead-lettered)
├── TokenEndpointError     the OAuth2 token endpoint failed in a passing way (the request is retried)
└── FatalError             the connector cannot go on safely (exit 1)
    ├── DestinationAuthError   the destination keeps refusing our credentials (401/403)
    ├── DeadLetterError        a dead-letter write failed, so the offsets behind it cannot be committed
    └── StartupError           the process cannot start (e.g. its metrics port is taken)
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error raised on purpose by the connector."""


class ConfigError(ConnectorError):
    """The configuration is invalid. The message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class FatalError(ConnectorError):
    """A sink or source cannot go on without risking loss; the process exits 1."""


class DestinationAuthError(FatalError):
    """The destination answered 401/403: nothing past this batch is committed."""


class DeadLetterError(FatalError):
    """The dead-letter topic did not acknowledge a write."""


class StartupError(FatalError):
    """Something the process needs to start is not there; the message says what."""


class RegistryError(ConnectorError):
    """The Schema Registry could not answer (unreachable, 5xx): the records are not at fault."""
