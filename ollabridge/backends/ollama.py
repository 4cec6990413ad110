"""An Ollama server reached over HTTP: the gateway's own Ollama, the in-box engine, or an
extra upstream from OLLABRIDGE_UPSTREAMS."""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx

from ollabridge import __version__
from ollabridge.backends import http1
from ollabridge.backends.base import Backend, BackendHealth
from ollabridge.errors import BackendError, ollama_error_message
from ollabridge.jsonwire import dumps as _dumps, loads as _loads

_STREAMS = {"chat": "/api/chat", "generate": "/api/generate"}
_OPS = {"embed": "/api/embed", "embeddings": "/api/embeddings", "show": "/api/show"}


class OllamaBackend(Backend):
    """Speaks Ollama's native API: chat and generate over a lean keep-alive pool for plain http, else httpx."""

    def __init__(self, name: str, base_url: str, *, kind: str = "ollama", connect_timeout: float = 5.0,
                 first_token_timeout: float = 300.0, idle_timeout: float = 120.0,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(name)
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256), headers=headers,
        )
        self._pool = (http1.Http1Pool(self.base_url, connect_timeout=connect_timeout,
                                      user_agent=f"ollabridge/{__version__}", headers=headers)
                       if http1.direct_http(self.base_url) else None)

    async def stream(self, op: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            reply = await http1.post_stream(self._pool, self._client, _STREAMS[op], _dumps(body),
                                            self.first_token_timeout, self.request_headers())
        except TimeoutError:
            raise BackendError(f"{self.name}: no answer within {self.first_token_timeout:g}s",
                               status=504, retryable=True, backend=self.name) from None
        except http1.READ_ERRORS as exc:
            raise BackendError(f"{self.name} is unreachable: {exc!r}", status=502,
                               retryable=True, backend=self.name) from exc
        try:
            if reply.status >= 400:
                try:
                    raw = await reply.read_all(30.0)
                except (TimeoutError, *http1.READ_ERRORS):
                    raw = b""
                raise BackendError(ollama_error_message(raw, reply.status), status=reply.status,
                                   retryable=reply.status >= 500, backend=self.name)
            lines = http1.Lines(reply, self.first_token_timeout, self.idle_timeout)
            try:
                async for line in lines:
                    try:
                        chunk = _loads(line)
                    except ValueError:
                        raise BackendError(f"{self.name} sent a line that is not JSON: {line[:200]!r}",
                                           backend=self.name) from None
                    if "error" in chunk:
                        raise BackendError(str(chunk["error"]), backend=self.name)
                    if chunk.get("done"):
                        await http1.drain(reply)  # before the yield: the consumer may stop at `done`
                        yield chunk
                        return
                    yield chunk
            except TimeoutError:
                raise BackendError(f"{self.name} sent nothing for {lines.timeout:g}s", status=504,
                                   retryable=True, backend=self.name) from None
            except http1.READ_ERRORS as exc:
                raise BackendError(f"{self.name} failed mid-stream: {exc!r}", retryable=True,
                                   backend=self.name) from exc
            raise BackendError(f"{self.name} ended the stream before it was done",
                               retryable=True, backend=self.name)
        finally:
            await http1.close(reply)

    def request_headers(self) -> dict[str, str] | None:
        """Headers for this one request, besides the backend's own (none for an Ollama)."""
        return None

    async def call(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", _OPS[op], body)

    async def fetch_models(self) -> list[dict[str, Any]]:
        data = await self._json("GET", "/api/tags", timeout=5.0)
        return list(data.get("models") or [])

    async def loaded(self) -> list[dict[str, Any]]:
        try:
            data = await self._json("GET", "/api/ps", timeout=5.0)
        except BackendError:
            return []
        return list(data.get("models") or [])

    async def ollama_version(self) -> str | None:
        try:
            return (await self._json("GET", "/api/version", timeout=3.0)).get("version")
        except BackendError:
            return None

    async def health(self) -> BackendHealth:
        try:
            data = await self._json("GET", "/api/version", timeout=3.0)
        except BackendError as exc:
            return BackendHealth(False, exc.message)
        return BackendHealth(True, "ok", data.get("version"))

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        await self._client.aclose()

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None,
                    timeout: float | None = None) -> dict[str, Any]:
        try:
            response = await self._client.request(
                method, path, json=body, headers=self.request_headers(),
                timeout=httpx.Timeout(timeout or self.first_token_timeout, connect=self._client.timeout.connect))
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.name} is unreachable: {exc!r}", status=502, retryable=True,
                               backend=self.name) from exc
        if response.status_code >= 400:
            raise BackendError(ollama_error_message(response.content, response.status_code),
                               status=response.status_code, retryable=response.status_code >= 500,
                               backend=self.name)
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"{self.name} answered with something that is not JSON",
                               backend=self.name) from None
