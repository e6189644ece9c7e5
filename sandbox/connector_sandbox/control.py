"""A small client of the sandbox's control endpoints, for tests, the demo and the benchmark.

`api` names a simulator, e.g. `rally_uxr.activities`. Settings are described in
`connector_sandbox.simulator`; the test triggers of each API in its simulator module.
"""

from __future__ import annotations

from typing import Any

import httpx


class SandboxClient:
    def __init__(self, base_url: str) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=30)

    def _ok(self, response: httpx.Response) -> Any:
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self._ok(self._http.post("/_sandbox/reset"))

    def configure(self, api: str, **settings: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._ok(self._http.post(f"/_sandbox/{api}/config", json=settings))
        return result

    def accepted(self, api: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._ok(self._http.get(f"/_sandbox/{api}/accepted"))
        return result

    def calls(self, api: str) -> list[tuple[float, str]]:
        """[epoch seconds, "METHOD route"] per request that used the rate-limit budget."""
        return [(float(t), str(c)) for t, c in self._ok(self._http.get(f"/_sandbox/{api}/calls"))]

    def timeline(self, api: str) -> list[tuple[float, int]]:
        """(epoch seconds, records accepted) for every request whose records were accepted."""
        return [(float(t), int(n)) for t, n in self._ok(self._http.get(f"/_sandbox/{api}/timeline"))]

    def refuse_connections(self, seconds: float) -> None:
        """Stop listening for `seconds`: clients get their connections refused meanwhile."""
        self._ok(self._http.post("/_sandbox/refuse_connections", params={"seconds": seconds}))

    def oauth(self, **settings: Any) -> dict[str, Any]:
        """Configure the token endpoint: client_id, client_secret, expires_in."""
        result: dict[str, Any] = self._ok(self._http.post("/_sandbox/oauth/config", json=settings))
        return result

    def oauth_revoke(self) -> None:
        self._ok(self._http.post("/_sandbox/oauth/revoke"))

    def oauth_stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._ok(self._http.get("/_sandbox/oauth/stats"))
        return result

    def stats(self, api: str) -> dict[str, Any]:
        result: dict[str, Any] = self._ok(self._http.get(f"/_sandbox/{api}/stats"))
        return result

    def add_activities(
        self, count: int, start_date: str, days: int = 1, ingested: str | None = None
    ) -> list[str]:
        """People.ai: add `count` activities dated over `days` days from `start_date`; their uids."""
        body: dict[str, Any] = {"count": count, "start_date": start_date, "days": days}
        if ingested is not None:
            body["ingested"] = ingested
        result: list[str] = self._ok(self._http.post("/_sandbox/peopleai.activities/activities", json=body))[
            "added"
        ]
        return result
