"""Write a router stream to the wire: SSE for OpenAI clients, NDJSON for Ollama ones.

Both start from the first chunk already in hand (so errors before it become a proper HTTP
status) and end a failed stream with an error event the client can read, never a silent cut.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from ollabridge.api.errors import ndjson_error_line, sse_error_event
from ollabridge.api.openai.convert import StreamTranslator
from ollabridge.errors import GatewayError
from ollabridge.jsonwire import dumps

log = logging.getLogger("ollabridge")

DONE = b"data: [DONE]\n\n"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def _failure(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    log.exception("stream failed")
    return GatewayError(f"Internal error: {type(exc).__name__}")


async def sse_stream(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]],
                     translator: StreamTranslator) -> AsyncIterator[bytes]:
    """OpenAI `chat.completion.chunk` events, then `[DONE]`."""
    try:
        for event in translator.translate(first):
            yield _sse(event)
        if not first.get("done"):
            async for chunk in rest:
                for event in translator.translate(chunk):
                    yield _sse(event)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an event the client sees
        err = _failure(exc)
        yield sse_error_event(err.message, err.type, err.code)
    finally:
        await rest.aclose()
    yield DONE


async def ndjson_stream(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Ollama native objects, one per line; a failure becomes an `{"error": ...}` line."""
    try:
        yield dumps(first) + b"\n"
        if not first.get("done"):
            async for chunk in rest:
                yield dumps(chunk) + b"\n"
    except Exception as exc:  # noqa: BLE001
        yield ndjson_error_line(_failure(exc).message)
    finally:
        await rest.aclose()


async def start(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The first chunk of `stream`; errors raised here still become an HTTP error status."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        raise GatewayError("The backend closed the stream without answering.", status=502) from None
    except BaseException:
        await stream.aclose()
        raise
