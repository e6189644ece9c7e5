"""One module per bulk API; `make_destination` picks one by the configured `type`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from connector.codec import Mapper, compile_mapping, schema_of
from connector.config import SinkSettings
from connector.destinations.base import Destination
from connector.destinations.http_bulk import HttpBulk
from connector.destinations.mediarithmics import MediarithmicsUserActivities
from connector.destinations.rally_crm import RallyCrmActivities
from connector.destinations.rally_uxr import RallyUxrActivities, RallyUxrPeople
from connector.errors import ConfigError

_REGISTRY: dict[str, Callable[[Mapping[str, Any]], Destination]] = {
    RallyUxrActivities.type: RallyUxrActivities,
    RallyUxrPeople.type: RallyUxrPeople,
    RallyCrmActivities.type: RallyCrmActivities,
    MediarithmicsUserActivities.type: MediarithmicsUserActivities,
    HttpBulk.type: HttpBulk,
}


def mapper_for(sink: SinkSettings, destination: Destination, index: int) -> Mapper | None:
    """The sink's `mapping:`, compiled against its destination's record schema (None without one)."""
    if sink.mapping is None:
        return None
    return compile_mapping(sink.mapping, schema_of(destination.schema_file), f"sinks[{index}].mapping")


def for_sink(sink: SinkSettings, index: int) -> tuple[Destination, int]:
    """A sink's destination and its batch's record count, checked against the API's cap."""
    key = f"sinks[{index}]"
    try:
        destination = make_destination(sink.destination.type, sink.destination.options)
    except ConfigError as exc:
        raise ConfigError(f"{key}.{exc.key}", exc.problem) from None
    cap = destination.max_records
    max_records = sink.batch.max_records or cap
    if max_records > cap:
        raise ConfigError(
            f"{key}.batch.max_records", f"{max_records} is above {destination.type}'s cap of {cap}"
        )
    return destination, max_records


def make_destination(kind: str, options: Mapping[str, Any]) -> Destination:
    factory = _REGISTRY.get(kind)
    if factory is None:
        raise ConfigError(
            "destination.type", f"unknown destination {kind!r}; known: {', '.join(sorted(_REGISTRY))}"
        )
    return factory(options)


__all__ = ["Destination", "for_sink", "make_destination", "mapper_for"]
