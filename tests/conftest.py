"""Shared fixtures: one real Kafka broker for the whole run, and the sandbox APIs in their own process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector_sandbox.control import SandboxClient
from connector_sandbox.kafka_broker import broker_from_env
from connector_sandbox.schema_registry import SchemaRegistry
from connector_sandbox.secured_broker import SecuredKafkaBroker
from connector_sandbox.server import SandboxProcess


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    bootstrap, broker = broker_from_env()
    try:
        yield bootstrap
    finally:
        if broker is not None:
            broker.stop()


@pytest.fixture(scope="session")
def secured_kafka() -> Iterator[SecuredKafkaBroker]:
    """A second broker, secured as users' clusters are (SASL_SSL, mutual TLS, ACLs, no auto-creation),
    started only for the tests that use it."""
    broker = SecuredKafkaBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[SchemaRegistry]:
    """A real Schema Registry (Apicurio, its Confluent-compatible API), for the whole run."""
    with SchemaRegistry() as registry:
        yield registry


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    with SandboxProcess() as sandbox:
        yield sandbox.url


@pytest.fixture
def sandbox(sandbox_url: str) -> SandboxClient:
    """The sandbox's control client, with every simulator reset to its defaults."""
    client = SandboxClient(sandbox_url)
    client.reset()
    return client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.integration.support import FIGURES

    if FIGURES:
        terminalreporter.section("figures measured in this run")
        for line in FIGURES:
            terminalreporter.write_line(line)
