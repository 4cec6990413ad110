"""Write a router stream to the wire: SSE (each wire family's `SSEEncoder`) or NDJSON (Ollama).

Both start from the first chunk already in hand (so errors before it become a proper HTTP
status) and end a failed stream with an error event the client can read, never a silent cut.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, TypeVar

import anyio
from starlette.responses import StreamingResponse

from ollabridge.api.errors import ndjson_error_line
from ollabridge.asgi import until_disconnect
from ollabridge.errors import GatewayError
from ollabridge.jsonwire import dumps

log = logging.getLogger("ollabridge")
T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
# What /openapi.json says one event of an SSE answer is (OpenAPI's per-event item): an optional `event`
# name and its `data` text (JSON, or `[DONE]`); each route's description says which events come.
SSE_EVENT_SCHEMA = {"type": "object", "required": ["data"],
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}


def sse_data(obj: dict[str, Any]) -> bytes:
    """One SSE event with only a `data:` line (OpenAI's chat and completions streams)."""
    return b"data: " + dumps(obj) + b"\n\n"


def sse_event(name: str, obj: dict[str, Any]) -> bytes:
    """One named SSE event (`event:` and `data:` lines: Anthropic's and the Responses API's streams)."""
    return b"event: " + name.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


class SSEEncoder:
    """How one wire family writes the canonical stream (Ollama chunk objects) as SSE events.

    `encode(chunk)` gives the bytes for one chunk (zero or more events), `end()` what follows the
    last one, `error(err)` what ends a stream that fails after it began (terminator included), and
    `keepalive` what is sent after a silence (an SSE comment, which every client skips).
    """

    keepalive = b": keep-alive\n\n"

    def encode(self, chunk: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        return b""

    def error(self, err: GatewayError) -> bytes:
        raise NotImplementedError


def failure(exc: BaseException) -> GatewayError:
    """Any exception as the GatewayError a client is told (unexpected ones are logged)."""
    if isinstance(exc, GatewayError):
        return exc
    log.exception("stream failed")
    return GatewayError(f"Internal error: {type(exc).__name__}")


async def sse_stream(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]],
                     encoder: SSEEncoder) -> AsyncIterator[bytes]:
    """The encoder's events for every chunk, then its end; a failure becomes its error event."""
    try:
        piece = encoder.encode(first)
        if piece:
            yield piece
        if not first.get("done"):
            async for chunk in rest:
                piece = encoder.encode(chunk)
                if piece:
                    yield piece
    except Exception as exc:  # noqa: BLE001 - every failure becomes an event the client sees
        yield encoder.error(failure(exc))
        return
    finally:
        await rest.aclose()
    yield encoder.end()


async def ndjson_stream(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Ollama native objects, one per line; a failure becomes an `{"error": ...}` line."""
    try:
        yield dumps(first) + b"\n"
        if not first.get("done"):
            async for chunk in rest:
                yield dumps(chunk) + b"\n"
    except Exception as exc:  # noqa: BLE001
        yield ndjson_error_line(failure(exc).message)
    finally:
        await rest.aclose()


class NDJSONResponse(StreamingResponse):
    """`ndjson_stream(first, rest)` as a response whose stream is closed when the response ends, however
    it ends: a client that goes away stops the backend now (a node gets its cancel), not when the
    garbage collector finalizes the generator."""

    def __init__(self, first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]) -> None:
        super().__init__(ndjson_stream(first, rest), media_type="application/x-ndjson")

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):  # starlette cancels this scope on a disconnect
                await self.body_iterator.aclose()


async def collect(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every chunk of a non-streamed answer (errors before the first still become an HTTP status)."""
    first = await start(stream)
    chunks = [first]
    try:
        if not first.get("done"):
            async for chunk in stream:
                chunks.append(chunk)
    finally:
        await stream.aclose()  # also after a first chunk that is the last: the backend's slot frees now
    return chunks


async def unless_gone(work: Awaitable[T], receive: Any) -> T:
    """`work` (a non-streamed answer, whose connection nothing else watches meanwhile), stopped at once
    when the client disconnects: its stream closes, so the backend stops too (a node gets its cancel).
    Raises a 499 GatewayError then ("client closed the request", the log line's status)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left, or this request was cancelled (a timeout, shutdown)
            task.cancel()
            await asyncio.wait((task,))  # it closes its stream
    if task.cancelled():
        raise GatewayError("The client closed the request.", status=499, code="client_closed")
    return task.result()


async def start(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The first chunk of `stream`; errors raised here still become an HTTP error status."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        raise GatewayError("The backend closed the stream without answering.", status=502) from None
    except BaseException:
        await stream.aclose()
        raise
