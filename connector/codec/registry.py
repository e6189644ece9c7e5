"""A Confluent-compatible Schema Registry client: writer schemas by id, fetched without blocking the
event loop, each once (ids are immutable), with schema references resolved.

`schema_registry:` takes the Confluent client's property names: `url`, `basic.auth.user.info`
(USER:PASSWORD), `bearer.auth.token`, `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`,
`ssl.key.password` (for an encrypted key).
Errors: SchemaNotFound (the id is not in the registry: the record is a decode_error), RegistryError (no
answer, 5xx: the records wait, nothing is dead-lettered), RegistryAuthError (401/403: fatal).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

from connector.errors import RegistryAuthError as RegistryAuthError
from connector.errors import RegistryError
from connector.errors import SchemaNotFound as SchemaNotFound
from connector.redact import register

MAX_REFERENCES = 64  # schemas one writer schema may pull in through references, at most
NOT_FOUND_CODES = (40401, 40402, 40403)  # subject, version, schema not found (Confluent's error codes)


class SchemaRegistry:
    def __init__(self, properties: Mapping[str, str], timeout: float = 10.0) -> None:
        self.url = properties["url"].rstrip("/")
        headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
        auth: httpx.BasicAuth | None = None
        self.secrets: list[str] = []
        user_info = properties.get("basic.auth.user.info")
        if user_info:
            user, _, password = user_info.partition(":")
            auth = httpx.BasicAuth(user, password)
            self.secrets += [user_info, password]
        credentials = urlsplit(self.url)
        if credentials.password:  # credentials in the URL itself (https://user:password@host)
            self.secrets += [credentials.password, f"{credentials.username}:{credentials.password}"]
        token = properties.get("bearer.auth.token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
            self.secrets.append(token)
        key_password = properties.get("ssl.key.password")
        if key_password:
            self.secrets.append(key_password)
        self.secrets = [secret for secret in self.secrets if len(secret) >= 4]
        register(self.secrets)
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=headers, auth=auth, timeout=timeout, verify=tls_context(properties)
        )

    async def schema(self, schema_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The writer schema of `schema_id`, and the schemas it references (dependencies first)."""
        answer = await self._get(f"/schemas/ids/{schema_id}", f"schema id {schema_id}")
        references: list[dict[str, Any]] = []
        await self._references(answer.get("references") or [], references, set())
        return _parsed(answer), references

    async def _references(
        self, refs: list[dict[str, Any]], out: list[dict[str, Any]], seen: set[tuple[str, int]]
    ) -> None:
        for ref in refs:
            key = (str(ref["subject"]), int(ref["version"]))
            if key in seen:
                continue
            seen.add(key)
            if len(seen) > MAX_REFERENCES:
                raise RegistryError(f"more than {MAX_REFERENCES} schema references")
            path = f"/subjects/{quote(key[0], safe='')}/versions/{key[1]}"
            answer = await self._get(path, f"reference {ref.get('name')}")
            await self._references(answer.get("references") or [], out, seen)  # dependencies first
            out.append(_parsed(answer))

    async def _get(self, path: str, what: str) -> dict[str, Any]:
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise RegistryError(f"schema registry unreachable: {type(exc).__name__}") from None
        if response.status_code == 404:
            # Only the registry's own codes say the schema is not there; any other 404 (a wrong path, an
            # ingress between deployments) is the registry not answering: the records wait.
            try:
                code = orjson.loads(response.content).get("error_code")
            except (orjson.JSONDecodeError, AttributeError):
                code = None
            if code in NOT_FOUND_CODES:
                raise SchemaNotFound(f"{what} is not in the registry")
            raise RegistryError(f"schema registry answered 404 without a registry error code for {what}")
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"the schema registry refused our credentials (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise RegistryError(f"schema registry answered HTTP {response.status_code} for {what}")
        try:
            answer: dict[str, Any] = orjson.loads(response.content)
            answer["schema"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise RegistryError(f"schema registry answered unreadably for {what}") from None
        return answer

    async def aclose(self) -> None:
        await self._client.aclose()


def tls_context(properties: Mapping[str, str]) -> ssl.SSLContext:
    """The TLS context: the system's CAs or `ssl.ca.location`, and the client certificate if given.
    (httpx's own `cert=` argument, deprecated, did not present the certificate: a test caught it.)"""
    ca = properties.get("ssl.ca.location")
    cert, key = properties.get("ssl.certificate.location"), properties.get("ssl.key.location")
    try:
        context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise RegistryAuthError(f"schema_registry: cannot load ssl.ca.location: {exc}") from None
    if cert and key:
        try:
            # Always a password (empty if none is given): without one, OpenSSL would prompt for it on the
            # terminal and the start would hang there.
            context.load_cert_chain(cert, key, password=properties.get("ssl.key.password", ""))
        except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: a password over 1024 bytes
            hint = "" if "ssl.key.password" in properties else " (an encrypted key needs ssl.key.password)"
            raise RegistryAuthError(
                f"schema_registry: cannot load ssl.certificate.location/ssl.key.location: {exc}{hint}"
            ) from None
    return context


def _parsed(answer: Mapping[str, Any]) -> dict[str, Any]:
    kind = answer.get("schemaType", "AVRO")
    if kind != "AVRO":
        raise SchemaNotFound(f"schema type {kind} is not Avro")
    try:
        schema: dict[str, Any] = orjson.loads(answer["schema"])
    except (orjson.JSONDecodeError, TypeError):
        raise RegistryError("schema registry answered a schema that is not JSON") from None
    return schema
