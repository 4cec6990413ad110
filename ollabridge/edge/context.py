"""What the edge knows about one request (`RequestContext`), and how routes reach it.

The edge puts a context at `scope["ollabridge"]` for every API request; routes record the model
asked for and hand the router the dict it fills with the backend that served and the final chunk
(`track`, which also names the caller to the router's queue); the log line and the metrics read them when the request ends.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any, AsyncIterator

# An in-process caller (the web UI, ollabridge/ui/edge_call.py) puts a dict at this key of the ASGI
# scope's `extensions`; `track` makes it the request's `served`, so the caller learns which backend
# answered. No HTTP client can set it (servers fill `extensions` themselves).
SERVED_EXTENSION = "ollabridge.served"
# The id of the request being served (its task's), for what passes it on: a replica forwarding a request
# to another sends it as X-Request-ID, so both log lines carry the same id.
REQUEST_ID: ContextVar[str | None] = ContextVar("ollabridge_request_id", default=None)

#: Client addresses of this machine (the owner, a local app, the bench).
LOOPBACK = ("127.", "::1", "::ffff:127.")


class RequestContext:
    """One request as the edge sees it; routes find it at `request.scope["ollabridge"]`."""

    __slots__ = ("id", "method", "path", "started", "client", "key", "ident", "weight", "model", "served", "status",
                 "content_type", "first_at", "task", "abort_reason", "abort_status", "abort_message",
                 "response_started", "prompt", "completion", "held", "timer", "encoder")

    def __init__(self, rid: str, method: str, path: str, started: float) -> None:
        self.id = rid
        self.method = method
        self.path = path
        self.started = started
        self.client = ""
        self.key: str | None = None
        self.ident: str | None = None
        self.weight = 1.0  # the key's share of the router's queue (edge/keys.py)
        self.model: str | None = None
        self.served: dict[str, Any] = {}
        self.status = 0
        self.content_type = b""
        self.first_at: float | None = None
        self.task: asyncio.Task | None = None
        self.abort_reason: str | None = None
        self.abort_status = 503
        self.abort_message = ""
        self.response_started = False
        self.prompt: Any = None
        self.completion: list[str] | None = None
        self.held = False
        self.timer: asyncio.TimerHandle | None = None
        self.encoder: Any = None  # an SSE stream's SSEEncoder: its error event ends an aborted stream

    def abort(self, reason: str, status: int, message: str) -> None:
        """End this request now with an error (from the event loop)."""
        if self.abort_reason is not None or self.task is None or self.task.done():
            return
        self.abort_reason, self.abort_status, self.abort_message = reason, status, message
        self.task.cancel()

    def expire(self, seconds: float) -> None:
        """The request timer fired: a 504 unless the answer has begun."""
        self.timer = None
        if not self.response_started:
            self.abort("timeout", 504, f"The request took longer than {seconds:g}s "
                                       "(OLLABRIDGE_REQUEST_TIMEOUT) before its answer began.")


def client_address(peer: str, forwarded: str | None, hops: int) -> str:
    """The caller's address: the peer's, or with `hops` trusted proxies (OLLABRIDGE_FORWARDED_HOPS) the
    hops-th X-Forwarded-For entry from the right (each trusted proxy appends the address it got the
    request from; what the caller wrote itself is further left)."""
    if hops > 0 and forwarded:
        parts = [p.strip() for p in forwarded.split(",") if p.strip()]
        if parts:
            return parts[-hops] if len(parts) >= hops else parts[0]
    return peer


def client(request: Any) -> str:
    """The address of the caller of a request that came through the edge (its context's), else its peer."""
    ctx = request.scope.get("ollabridge")
    if ctx is not None:
        return ctx.client
    return request.client.host if request.client else ""


def context(request: Any) -> RequestContext | None:
    """The request's context, or None (a request that did not come through the edge)."""
    return request.scope.get("ollabridge")


def track(request: Any, model: str | None = None) -> dict[str, Any] | None:
    """Record the model this request is for (the log line's `model`), and return the dict the
    router fills with the backend that serves it and its final chunk (None outside the edge); it
    tells the router who asks (`caller`: key or address, and its `weight`) for its fair queue."""
    ctx = request.scope.get("ollabridge")
    if ctx is None:
        return None
    if model:
        ctx.model = model
    if ctx.ident:
        ctx.served.update(caller=ctx.ident, weight=ctx.weight)
    shared = (request.scope.get("extensions") or {}).get(SERVED_EXTENSION)
    if isinstance(shared, dict):
        shared.update(ctx.served)
        ctx.served = shared
    return ctx.served


def with_content(request: Any, prompt: Any, stream: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Keep the prompt and the completion's text for the log line (OLLABRIDGE_LOG_CONTENT=1 only)."""
    ctx = request.scope.get("ollabridge")
    if ctx is not None:
        ctx.prompt = prompt.get("messages") if isinstance(prompt, dict) else prompt
    return _capture(ctx, stream)


async def _capture(ctx: RequestContext | None, stream: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    parts: list[str] = []
    if ctx is not None:
        ctx.completion = parts
    try:
        async for chunk in stream:
            text = (chunk.get("message") or {}).get("content") or chunk.get("response")  # chat, generate
            if text:
                parts.append(text)
            yield chunk
    finally:
        await stream.aclose()
