"""Request headers for each configured auth type. Secrets are revealed only into the header values."""

from __future__ import annotations

from connector.config import AuthSettings
from connector.errors import ConfigError


def auth_headers(auth: AuthSettings) -> dict[str, str]:
    if auth.type == "none":
        return {}
    if auth.type == "bearer" and auth.token is not None:
        return {"Authorization": f"Bearer {auth.token.reveal()}"}
    if auth.type in ("api_key", "header") and auth.value is not None:
        return {auth.header: auth.value.reveal()}
    raise ConfigError("destination.auth.type", f"{auth.type} is not available for sinks in this version")
