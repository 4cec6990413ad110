"""Experiment, not product code: `OllamaBackend.chat` on a minimal pooled HTTP/1.1 client instead of httpx.

Profiling (docs/benchmarks.md) shows httpx/httpcore as the largest single cost per request: its pool
scans every connection (a socket poll each) on every request, and each streamed chunk climbs ~10
generator layers. This swaps in a plain asyncio-streams client (keep-alive pool, chunked/length
bodies, the same timeouts and BackendErrors) to measure what replacing it would buy:

    python bench/run.py --gateway-app bench/experiments/app_lean.py ...

Only plain http:// upstreams, no proxies, no TLS: enough to measure, not to ship as is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import orjson

from ollabridge.backends import ollama
from ollabridge.errors import BackendError


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer


_pools: dict[tuple[str, int], deque[_Conn]] = {}


async def _open(host: str, port: int, timeout: float) -> _Conn:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    return _Conn(reader, writer)


async def lean_chat(self: ollama.OllamaBackend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    parts = urlsplit(self.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pool = _pools.setdefault((host, port), deque())
    payload = orjson.dumps(body)
    head = (f"POST {parts.path.rstrip('/')}/api/chat HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    timeout = self.first_token_timeout
    conn: _Conn | None = None
    for attempt in range(2):  # a pooled connection the server closed: once more on a new one
        reused = bool(pool)
        try:
            conn = pool.pop() if reused else await _open(host, port, self._client.timeout.connect or 5.0)
            conn.writer.write(head + payload)
            async with asyncio.timeout(timeout):
                status_head = await conn.reader.readuntil(b"\r\n\r\n")
            break
        except TimeoutError:
            if conn:
                conn.writer.close()
            raise BackendError(f"{self.name}: no answer within {timeout:g}s", status=504, retryable=True,
                               backend=self.name) from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            if conn:
                conn.writer.close()
            conn = None
            if reused and attempt == 0:
                continue
            raise BackendError(f"{self.name} is unreachable: {exc!r}", status=502, retryable=True,
                               backend=self.name) from exc
    assert conn is not None
    lines = status_head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, keep = -1, False, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep = b"close" not in value.lower()
    reader = conn.reader
    clean = False

    async def read_piece(t: float) -> bytes:
        """The next piece of the body; b'' at its end."""
        nonlocal length
        async with asyncio.timeout(t):
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b""
                return (await reader.readexactly(size + 2))[:-2]
            if length >= 0:
                if length == 0:
                    return b""
                data = await reader.readexactly(length)
                length = 0
                return data
            return await reader.read(65536)

    try:
        if status >= 400:
            raw = b""
            while piece := await read_piece(30.0):
                raw += piece
            clean = True
            raise BackendError(ollama.error_text(raw, status), status=status, retryable=status >= 500,
                               backend=self.name)
        pending = b""
        ended = False
        while not ended:
            try:
                piece = await read_piece(timeout)
            except TimeoutError:
                raise BackendError(f"{self.name} sent nothing for {timeout:g}s", status=504,
                                   retryable=True, backend=self.name) from None
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise BackendError(f"{self.name} failed mid-stream: {exc!r}", retryable=True,
                                   backend=self.name) from exc
            if not piece:
                ended, piece = True, b"\n"
            chunks = (pending + piece).split(b"\n")
            pending = chunks.pop()
            for line in chunks:
                if not line.strip():
                    continue
                timeout = self.idle_timeout
                try:
                    chunk = orjson.loads(line)
                except ValueError:
                    raise BackendError(f"{self.name} sent a line that is not JSON: {line[:200]!r}",
                                       backend=self.name) from None
                if "error" in chunk:
                    raise BackendError(str(chunk["error"]), backend=self.name)
                if chunk.get("done"):
                    if not ended:  # the end of the body is normally already here
                        try:
                            while await read_piece(1.0):
                                pass
                            clean = True
                        except (TimeoutError, OSError, asyncio.IncompleteReadError):
                            pass
                    else:
                        clean = True
                    yield chunk
                    return
                yield chunk
        raise BackendError(f"{self.name} ended the stream before it was done", retryable=True,
                           backend=self.name)
    finally:
        if clean and keep and len(pool) < 256:
            pool.append(conn)
        else:
            conn.writer.close()


def install() -> None:
    ollama.OllamaBackend.chat = lean_chat  # type: ignore[method-assign]
