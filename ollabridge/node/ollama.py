"""This machine's Ollama, as the agent reaches it: one httpx client, the lean HTTP/1.1 pool for chat
streams when the URL is plain http (the usual), and the model list it offers the gateway."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from ollabridge.backends import http1
from ollabridge.node import AGENT

log = logging.getLogger("ollabridge.node")


class LocalOllama:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(10.0, read=None),
                                      limits=httpx.Limits(max_connections=None))
        # Chat streams on the lean keep-alive pool when the local Ollama is plain http (the usual).
        self.pool = (http1.Http1Pool(self.url, connect_timeout=10.0, user_agent=AGENT)
                     if http1.direct_http(self.url) else None)

    async def models(self) -> list[dict[str, Any]]:
        """Its models as `/api/tags` lists them; none (and a warning) while it does not answer."""
        try:
            response = await self.http.get("/api/tags", timeout=5.0)
            response.raise_for_status()
            return [m for m in response.json().get("models") or [] if m.get("name") or m.get("model")]
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("the local Ollama at %s does not answer (%s); offering no models for now", self.url, exc)
            return []

    async def version(self) -> str | None:
        """Its `/api/version` (the gateway's /api/version reports the lowest of its backends')."""
        try:
            response = await self.http.get("/api/version", timeout=5.0)
            response.raise_for_status()
            version = response.json().get("version")
            return version if isinstance(version, str) else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        await self.http.aclose()
