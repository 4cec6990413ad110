"""An Ollama server reached over HTTP: the gateway's own Ollama, the in-box engine, or an
extra upstream from OLLABRIDGE_UPSTREAMS."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import httpx

from ollabridge.backends.base import Backend, BackendHealth
from ollabridge.errors import BackendError, error_text
from ollabridge.jsonwire import dumps as _dumps, loads as _loads

_OPS = {"embed": "/api/embed", "embeddings": "/api/embeddings", "show": "/api/show"}
_JSON_HEADERS = {"Content-Type": "application/json"}
# How long to wait, after the `done` object, for the end of the HTTP body (a real server sends it
# right after) so that the connection goes back to the pool instead of being closed.
_DRAIN_TIMEOUT = 1.0


async def _drain(pieces: AsyncIterator[bytes]) -> None:
    """Read a finished response to its end, so httpx keeps the connection alive for the next."""
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT):
            async for _ in pieces:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass  # the connection is closed instead; nothing the caller needs to know


class OllamaBackend(Backend):
    """Speaks Ollama's native API with one pooled httpx client."""

    def __init__(self, name: str, base_url: str, *, kind: str = "ollama", connect_timeout: float = 5.0,
                 first_token_timeout: float = 300.0, idle_timeout: float = 120.0) -> None:
        super().__init__(name)
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0, pool=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        request = self._client.build_request("POST", "/api/chat", content=_dumps(body),
                                             headers=_JSON_HEADERS)
        try:
            async with asyncio.timeout(self.first_token_timeout):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise BackendError(f"{self.name}: no answer within {self.first_token_timeout:g}s",
                               status=504, retryable=True, backend=self.name) from None
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.name} is unreachable: {exc}", status=502,
                               retryable=True, backend=self.name) from exc
        done = False
        pieces = response.aiter_bytes()
        try:
            if response.status_code >= 400:
                raw = await response.aread()
                raise BackendError(error_text(raw, response.status_code), status=response.status_code,
                                   retryable=response.status_code >= 500, backend=self.name)
            # One timeout per network read (not per line): a read often carries many lines.
            timeout = self.first_token_timeout
            pending = b""
            ended = False
            while not ended:
                try:
                    async with asyncio.timeout(timeout):
                        piece = await anext(pieces)
                except StopAsyncIteration:
                    ended, piece = True, b"\n"  # the last line may lack its newline (stream: false)
                except TimeoutError:
                    raise BackendError(f"{self.name} sent nothing for {timeout:g}s", status=504,
                                       retryable=True, backend=self.name) from None
                except httpx.HTTPError as exc:
                    raise BackendError(f"{self.name} failed mid-stream: {exc}", retryable=True,
                                       backend=self.name) from exc
                lines = (pending + piece).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.strip():
                        continue
                    timeout = self.idle_timeout
                    try:
                        chunk = _loads(line)
                    except ValueError:
                        raise BackendError(f"{self.name} sent a line that is not JSON: {line[:200]!r}",
                                           backend=self.name) from None
                    if "error" in chunk:
                        raise BackendError(str(chunk["error"]), backend=self.name)
                    done = bool(chunk.get("done"))
                    yield chunk
                    if done:
                        return
            raise BackendError(f"{self.name} ended the stream before it was done",
                               retryable=True, backend=self.name)
        finally:
            try:
                if done:
                    await _drain(pieces)
            finally:
                await response.aclose()

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

    async def version(self) -> str | None:
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
        await self._client.aclose()

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None,
                    timeout: float | None = None) -> dict[str, Any]:
        try:
            response = await self._client.request(
                method, path, json=body,
                timeout=httpx.Timeout(timeout or self.first_token_timeout, connect=self._client.timeout.connect))
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.name} is unreachable: {exc!r}", status=502, retryable=True,
                               backend=self.name) from exc
        if response.status_code >= 400:
            raise BackendError(error_text(response.content, response.status_code),
                               status=response.status_code, retryable=response.status_code >= 500,
                               backend=self.name)
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"{self.name} answered with something that is not JSON",
                               backend=self.name) from None
