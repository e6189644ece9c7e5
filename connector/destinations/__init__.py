"""One module per bulk API; `make_destination` picks one by the configured `type`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from connector.destinations.base import Destination
from connector.destinations.rally_uxr import RallyUxrActivities
from connector.errors import ConfigError

_REGISTRY: dict[str, Callable[[Mapping[str, Any]], Destination]] = {
    RallyUxrActivities.type: RallyUxrActivities,
}


def make_destination(kind: str, options: Mapping[str, Any]) -> Destination:
    factory = _REGISTRY.get(kind)
    if factory is None:
        raise ConfigError(
            "destination.type", f"unknown destination {kind!r}; known: {', '.join(sorted(_REGISTRY))}"
        )
    return factory(options)


__all__ = ["Destination", "make_destination"]
