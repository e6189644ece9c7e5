"""Credentials on requests, for each configured auth type. Secrets are revealed only into header values.

Static credentials (bearer, api_key, header) are default headers of the HTTP clients. OAuth2 client
credentials: the token is cached, refreshed shortly before it expires, and fetched anew once when the API
answers 401 (the token may have been revoked early); the sink's client asks `token()` itself
(connector.delivery.http), the source's httpx client uses this as its auth flow.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import httpx

from connector.config import AuthSettings
from connector.errors import ConfigError, DestinationAuthError
from connector.errors import TokenEndpointError as TokenEndpointError
from connector.redact import SECRETS

# Seconds a token is used at least, whatever `expires_in` says (0 or less would fetch one per request);
# a token revoked sooner is answered 401, and fetched anew then.
MIN_TOKEN_REUSE = 30.0
DEFAULT_LIFETIME = 3600.0


class OAuth2ClientCredentials(httpx.Auth):
    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str = "",
    ) -> None:
        self._url = token_url
        self._issuer = f"{id(self)}"  # this flow: its tokens age out only as it fetches new ones
        SECRETS.add(client_secret)
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
        }
        if scope:
            self._form["scope"] = scope
        self._client = httpx.AsyncClient(timeout=30)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.fetched = 0  # tokens fetched so far

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self.token(stale=token)}"
            yield request

    async def token(self, stale: str | None = None) -> str:
        """The access token to send; a new one when `stale` (answered 401) is still the cached one."""
        async with self._lock:
            token = self._token
            if (
                token is not None
                and token != stale
                and (stale is not None or time.monotonic() < self._refresh_at)
            ):
                return token
            try:
                answer = await self._client.post(self._url, data=self._form)
            except httpx.HTTPError as exc:
                raise TokenEndpointError(f"token endpoint unreachable ({type(exc).__name__})") from None
            if answer.status_code >= 500 or answer.status_code == 429:
                raise TokenEndpointError(f"token endpoint answered HTTP {answer.status_code}")
            if answer.status_code != 200:
                raise DestinationAuthError(
                    f"the token endpoint refused our client credentials (HTTP {answer.status_code})"
                )
            try:
                data = answer.json()
                token = str(data["access_token"])
                lifetime = float(data.get("expires_in", DEFAULT_LIFETIME))
            except (ValueError, KeyError, TypeError, OverflowError):
                raise TokenEndpointError("token endpoint answered without an access_token") from None
            SECRETS.add_token(token, self._issuer)  # an API may echo it back
            self._token = token
            if not math.isfinite(lifetime):
                lifetime = DEFAULT_LIFETIME
            # Refresh before expiry: a tenth of the lifetime early, at most a minute; never sooner than
            # MIN_TOKEN_REUSE after fetching.
            self._refresh_at = time.monotonic() + max(MIN_TOKEN_REUSE, lifetime - min(60.0, lifetime / 10))
            self.fetched += 1
            return token

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass
class Credentials:
    headers: dict[str, str] = field(default_factory=dict)
    auth: OAuth2ClientCredentials | None = None
    # The configured secrets (registered with connector.redact.SECRETS, which also gets issued tokens).
    secrets: list[str] = field(default_factory=list)


def credentials(auth: AuthSettings) -> Credentials:
    """The headers and auth flow for `auth`; its secrets are registered for masking."""
    creds = _credentials(auth)
    for secret in creds.secrets:
        SECRETS.add(secret)
    return creds


def _credentials(auth: AuthSettings) -> Credentials:
    if auth.type == "none":
        return Credentials()
    if auth.type == "bearer" and auth.token is not None:
        return Credentials(
            headers={"Authorization": f"Bearer {auth.token.reveal()}"}, secrets=[auth.token.reveal()]
        )
    if auth.type in ("api_key", "header") and auth.value is not None:
        return Credentials(headers={auth.header: auth.value.reveal()}, secrets=[auth.value.reveal()])
    if auth.type == "oauth2_client_credentials" and auth.client_secret is not None:
        secret = auth.client_secret.reveal()
        flow = OAuth2ClientCredentials(auth.token_url, auth.client_id, secret, auth.scope)
        return Credentials(auth=flow, secrets=[secret])
    raise ConfigError("destination.auth", f"incomplete settings for auth type {auth.type}")
