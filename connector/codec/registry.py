"""A Confluent-compatible Schema Registry client: schema by id, cached for the process's life."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from connector.codec.base import DecodeError
from connector.errors import RegistryError


class SchemaRegistry:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self._cache: dict[int, dict[str, Any]] = {}

    def schema(self, schema_id: int) -> dict[str, Any]:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        try:
            response = self._client.get(f"/schemas/ids/{schema_id}")
        except httpx.HTTPError as exc:
            # Not a decode error of the record: the registry is unreachable, so stop rather than dead-letter.
            raise RegistryError(f"schema registry unreachable: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise DecodeError(f"schema id {schema_id} is not in the registry")
        if response.status_code != 200:
            raise RegistryError(
                f"schema registry answered HTTP {response.status_code} for schema id {schema_id}"
            )
        try:
            schema: dict[str, Any] = orjson.loads(orjson.loads(response.content)["schema"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise RegistryError(
                f"schema registry answered an unreadable schema ({type(exc).__name__})"
            ) from None
        self._cache[schema_id] = schema
        return schema
