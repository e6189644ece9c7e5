"""The proxy the environment names for a sink's API, read as curl and httpx read it.

`HTTPS_PROXY` / `HTTP_PROXY` by the URL's scheme, else `ALL_PROXY`; a value without a scheme is an
http:// proxy. `NO_PROXY` lists hosts that go direct: `*` (anywhere in the list) for all, a name for itself
and its subdomains (`example.com`, `.example.com`, `*.example.com`), `host:port` for that port only, and IP
addresses or networks (`10.0.0.0/8`, `::1`). The value of a proxy variable may carry credentials: no part
of it goes into an error.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.request
from urllib.parse import urlsplit

from connector.errors import ConfigError

_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:]*):(\d+)")


def proxy_for(url: str, key: str) -> str | None:
    """The proxy URL for requests to `url`, or None to go direct. ConfigError (naming `key`, the setting
    that holds `url`) for a proxy that is not http(s) or not a URL: going direct instead could break or
    sidestep an egress policy."""
    parts = urlsplit(url)
    environment = urllib.request.getproxies_environment()
    if _bypassed(parts.hostname or "", parts.port, environment.get("no", "")):
        return None
    proxy = environment.get(parts.scheme) or environment.get("all")
    if not proxy:
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    try:
        scheme, host = urlsplit(proxy).scheme, urlsplit(proxy).hostname
    except ValueError:
        scheme, host = "", None
    if scheme not in ("http", "https") or not host:
        raise ConfigError(
            key,
            "the environment's proxy for it (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) is not an http:// "
            "or https:// URL with a host",
        )
    return proxy


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    host = host.lower()
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        wanted: int | None = None
        matched = _HOST_PORT.fullmatch(entry)
        if matched:
            entry, wanted = matched.group(1), int(matched.group(2))
        entry = entry.strip("[]")
        if wanted is not None and wanted != port:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            network = None
        if network is not None:
            try:
                if ipaddress.ip_address(host) in network:
                    return True
            except ValueError:
                pass
            continue
        name = entry.lstrip("*").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False
