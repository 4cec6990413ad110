"""An Ollama server reached over HTTP: the gateway's own Ollama, the in-box engine, or an
extra upstream from OLLABRIDGE_UPSTREAMS."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import httpx

from ollabridge import __version__
from ollabridge.backends.base import Backend, BackendHealth
from ollabridge.backends.http1 import Http1Pool, Http1Response
from ollabridge.errors import BackendError, error_text
from ollabridge.jsonwire import dumps as _dumps, loads as _loads

_OPS = {"embed": "/api/embed", "embeddings": "/api/embeddings", "show": "/api/show"}
_JSON_HEADERS = {"Content-Type": "application/json"}
# How long to wait, after the `done` object, for the end of the HTTP body (a real server sends it
# right after) so that the connection goes back to the pool instead of being closed.
_DRAIN_TIMEOUT = 1.0
_READ_ERRORS = (OSError, httpx.HTTPError)


async def _drain(reply: Http1Response | _HttpxReply) -> None:
    """Read a finished reply to its end, so its connection can serve the next request."""
    try:
        while not reply.finished and await reply.read(_DRAIN_TIMEOUT):
            pass
    except (TimeoutError, *_READ_ERRORS):
        pass  # the connection is closed instead; nothing the caller needs to know


def _direct_http(url: str) -> bool:
    """True when `url` is plain http and no proxy from the environment applies (httpx would use it)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass_environment(parts.hostname or "", proxies))


class _HttpxReply:
    """An httpx streaming response behind the same three calls as `Http1Response`."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self._response = response
        self._pieces = response.aiter_bytes()
        self.finished = False

    async def read(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            piece = await anext(self._pieces, b"")
        self.finished = not piece
        return piece

    async def read_all(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            return await self._response.aread()

    async def aclose(self) -> None:
        await self._response.aclose()


class OllamaBackend(Backend):
    """Speaks Ollama's native API: chat over a lean keep-alive pool for plain http, else httpx."""

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
        self._pool = (Http1Pool(self.base_url, connect_timeout=connect_timeout,
                                user_agent=f"ollabridge/{__version__}")
                      if _direct_http(self.base_url) else None)

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            reply = await self._send_chat(_dumps(body))
        except TimeoutError:
            raise BackendError(f"{self.name}: no answer within {self.first_token_timeout:g}s",
                               status=504, retryable=True, backend=self.name) from None
        except _READ_ERRORS as exc:
            raise BackendError(f"{self.name} is unreachable: {exc!r}", status=502,
                               retryable=True, backend=self.name) from exc
        done = False
        try:
            if reply.status >= 400:
                try:
                    raw = await reply.read_all(30.0)
                except (TimeoutError, *_READ_ERRORS):
                    raw = b""
                raise BackendError(error_text(raw, reply.status), status=reply.status,
                                   retryable=reply.status >= 500, backend=self.name)
            # One timeout per network read (not per line): a read often carries many lines.
            timeout = self.first_token_timeout
            pending = b""
            ended = False
            while not ended:
                try:
                    piece = await reply.read(timeout)
                except TimeoutError:
                    raise BackendError(f"{self.name} sent nothing for {timeout:g}s", status=504,
                                       retryable=True, backend=self.name) from None
                except _READ_ERRORS as exc:
                    raise BackendError(f"{self.name} failed mid-stream: {exc!r}", retryable=True,
                                       backend=self.name) from exc
                if not piece:
                    ended, piece = True, b"\n"  # the last line may lack its newline (stream: false)
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
                    if done:
                        await _drain(reply)  # before the yield: the consumer may stop at `done`
                    yield chunk
                    if done:
                        return
            raise BackendError(f"{self.name} ended the stream before it was done",
                               retryable=True, backend=self.name)
        finally:
            if isinstance(reply, _HttpxReply):
                await reply.aclose()
            else:
                reply.release()

    async def _send_chat(self, payload: bytes) -> Http1Response | _HttpxReply:
        if self._pool is not None:
            return await self._pool.request("POST", "/api/chat", payload, timeout=self.first_token_timeout)
        request = self._client.build_request("POST", "/api/chat", content=payload, headers=_JSON_HEADERS)
        async with asyncio.timeout(self.first_token_timeout):
            return _HttpxReply(await self._client.send(request, stream=True))

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
        if self._pool is not None:
            self._pool.close()
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
