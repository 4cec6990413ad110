"""The API's edge: one ASGI middleware for what every request goes through.

- a request id (the caller's `X-Request-ID` when sane, else a new one), returned as `X-Request-ID`;
- API keys on `/v1`, `/ollama/v1` and `/ollama/api` (`Authorization: Bearer` or `X-API-Key`) when
  any key is configured or minted; 401 in the caller's error format;
- rate limits per key, or per client address without one: requests a minute and requests in
  flight; 429 with `Retry-After`;
- a total timeout for answers that have not begun (non-streamed ones), 504;
- graceful shutdown: while draining, new API requests get 503; at the drain deadline the gateway
  ends what is still running with an error (an SSE error event and `[DONE]`, an NDJSON error line);
- metrics (ollabridge/metrics.py) and one structured log line per request, without prompt or
  completion text unless OLLABRIDGE_LOG_CONTENT=1.

Pure ASGI (no BaseHTTPMiddleware) and no I/O: a few dict lookups per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, AsyncIterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollabridge.api.errors import render
from ollabridge.api.openai_convert import error_body
from ollabridge.jsonwire import dumps as _json_bytes

access_log = logging.getLogger("ollabridge.access")


def _dumps(obj: Any) -> str:
    return _json_bytes(obj).decode()


API_PREFIXES = ("/v1/", "/ollama/v1/", "/ollama/api/")
# Requests that hold a backend while they run: these count against the in-flight limit.
GENERATION = frozenset({"/v1/chat/completions", "/ollama/v1/chat/completions", "/v1/embeddings",
                        "/ollama/v1/embeddings", "/ollama/api/chat", "/ollama/api/embed", "/ollama/api/embeddings"})
KNOWN_PATHS = GENERATION | {"/v1/models", "/ollama/v1/models", "/ollama/api/tags", "/ollama/api/show",
                            "/ollama/api/ps", "/ollama/api/version", "/health", "/metrics", "/ollama/status"}
# Other routes that get a log line and metrics (the web UI's own requests get neither).
OBSERVED = ("/admin/", "/device/", "/health", "/metrics", "/ollama/status", "/node/")
LOOPBACK = ("127.", "::1", "::ffff:127.")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class RequestContext:
    """What the edge knows about one request; routes find it at `request.scope["ollabridge"]`."""

    __slots__ = ("id", "method", "path", "started", "client", "key", "ident", "model", "served", "status",
                 "content_type", "first_at", "task", "abort_reason", "abort_status", "abort_message",
                 "response_started", "prompt", "completion", "held", "timer")

    def __init__(self, rid: str, method: str, path: str, started: float) -> None:
        self.id = rid
        self.method = method
        self.path = path
        self.started = started
        self.client = ""
        self.key: str | None = None
        self.ident: str | None = None
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

    def abort(self, reason: str, status: int, message: str) -> None:
        """End this request now with an error (from the event loop)."""
        if self.abort_reason is not None or self.task is None or self.task.done():
            return
        self.abort_reason, self.abort_status, self.abort_message = reason, status, message
        self.task.cancel()

    def _expire(self, seconds: float) -> None:
        self.timer = None
        if not self.response_started:
            self.abort("timeout", 504, f"The request took longer than {seconds:g}s "
                                       "(OLLABRIDGE_REQUEST_TIMEOUT) before its answer began.")


def context(request: Any) -> RequestContext | None:
    """The request's context, or None (a request that did not come through the edge)."""
    return request.scope.get("ollabridge")


def served(request: Any, model: str | None = None) -> dict[str, Any] | None:
    """The dict the router fills with the backend that answered (and the final chunk)."""
    ctx = request.scope.get("ollabridge")
    if ctx is None:
        return None
    if model:
        ctx.model = model
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
            message = chunk.get("message") or {}
            if message.get("content"):
                parts.append(message["content"])
            yield chunk
    finally:
        await stream.aclose()


def _sane_id(value: bytes) -> str | None:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if 0 < len(text) <= 64 and set(text) <= _ID_CHARS else None


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, gateway: Any) -> None:
        self.app = app
        self.gateway = gateway
        settings = gateway.settings
        self.hops = max(0, settings.forwarded_hops)
        self.rpm = settings.rate_limit_rpm
        self.streams = settings.rate_limit_streams
        self.key_rpm = settings.key_rate_limit_rpm
        self.key_streams = settings.key_rate_limit_streams
        self.request_timeout = settings.request_timeout
        self.log_content = settings.log_content

    def client_address(self, scope: Scope, forwarded: str | None) -> str:
        """The peer's address, or with OLLABRIDGE_FORWARDED_HOPS=N the N-th X-Forwarded-For entry
        from the right (each trusted proxy appends the address it got the request from)."""
        if self.hops and forwarded:
            parts = [p.strip() for p in forwarded.split(",") if p.strip()]
            if parts:
                return parts[-self.hops] if len(parts) >= self.hops else parts[0]
        client = scope.get("client")
        return client[0] if client else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path.startswith(API_PREFIXES)
        if not api and not path.startswith(OBSERVED):
            await self.app(scope, receive, send)  # the web UI and its assets
            return
        gw = self.gateway
        loop = asyncio.get_running_loop()
        rid = auth = api_key = forwarded = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"x-request-id":
                rid = _sane_id(value)
            elif name == b"x-forwarded-for":
                forwarded = value.decode("latin-1") if forwarded is None else f"{forwarded},{value.decode('latin-1')}"
        ctx = RequestContext(rid or os.urandom(8).hex(), scope["method"], path, loop.time())
        scope["ollabridge"] = ctx
        ctx.client = self.client_address(scope, forwarded)
        id_header = (b"x-request-id", ctx.id.encode())

        async def refuse(status: int, message: str, headers: dict[str, str] | None = None,
                         type_: str | None = None, code: str | None = None) -> None:
            response = render(path, status, message, type_=type_, code=code, headers=headers)
            response.raw_headers.append(id_header)
            ctx.status = status
            await response(scope, receive, send)

        if gw.draining and (api or path == "/health"):
            await refuse(503, "The gateway is shutting down; retry in a few seconds.",
                         {"Retry-After": "5", "Connection": "close"}, code="shutting_down")
            self._finish(ctx, scope)
            return
        generation = False
        if api:
            keys = gw.keys
            key = None
            secret: bytes | None = None
            if auth is not None:
                scheme, _, token = auth.partition(b" ")
                if scheme.lower() == b"bearer":
                    secret = token.strip()
            if not secret and api_key is not None:
                secret = api_key.strip()
            if keys.enabled:
                key = keys.check(secret.decode("latin-1")) if secret else None
                if key is None:
                    gw.metrics.auth_failures += 1
                    # Wrong keys spend the address's budget: guessing is rate limited too.
                    retry = gw.limiter.take("ip:" + ctx.client, self.rpm)
                    if retry:
                        gw.metrics.limited("ip", "rpm")
                        await refuse(429, f"Rate limit reached: {self.rpm} requests a minute from this address. "
                                          f"Retry in {retry}s.", {"Retry-After": str(retry)},
                                     code="rate_limit_exceeded")
                    else:
                        if not secret:
                            why = "A valid API key is required: send it as 'Authorization: Bearer <key>' or " \
                                  "'X-API-Key: <key>'."
                        elif gw.pairing.is_admin(secret.decode("latin-1")):
                            why = "The admin token is not an API key; mint one with POST /admin/keys."
                        else:
                            why = "That API key is not valid."
                        await refuse(401, why, {"WWW-Authenticate": "Bearer"}, code="invalid_api_key")
                    self._finish(ctx, scope)
                    return
                ctx.key = key.id
            if key is not None:
                ident, scope_name = "key:" + key.id, "key"
                rpm = self.key_rpm if key.rpm is None else key.rpm
                streams = self.key_streams if key.streams is None else key.streams
            elif ctx.client.startswith(LOOPBACK):
                # This machine (the owner, a local app, the bench): no per-address limits. Behind a
                # proxy set OLLABRIDGE_FORWARDED_HOPS, or every client looks like the proxy.
                ident, scope_name, rpm, streams = "ip:" + ctx.client, "ip", 0, 0
            else:
                ident, scope_name, rpm, streams = "ip:" + ctx.client, "ip", self.rpm, self.streams
            retry = gw.limiter.take(ident, rpm)
            if retry:
                gw.metrics.limited(scope_name, "rpm")
                who = "this key" if key is not None else "this address"
                await refuse(429, f"Rate limit reached: {rpm} requests a minute for {who}. Retry in {retry}s.",
                             {"Retry-After": str(retry)}, code="rate_limit_exceeded")
                self._finish(ctx, scope)
                return
            generation = path in GENERATION and streams > 0
            if generation:
                if not gw.limiter.enter(ident, streams, rpm):
                    gw.metrics.limited(scope_name, "streams")
                    who = "this key" if key is not None else "this address"
                    await refuse(429, f"Too many requests in flight: {streams} at once for {who}. Retry when "
                                      "one has finished.", {"Retry-After": "1"}, code="rate_limit_exceeded")
                    self._finish(ctx, scope)
                    return
                ctx.held = True
            ctx.ident = ident
            ctx.task = asyncio.current_task()
            gw.inflight.add(ctx)
            if self.request_timeout > 0:
                ctx.timer = loop.call_at(ctx.started + self.request_timeout, ctx._expire, self.request_timeout)

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.response_started = True
                ctx.status = message["status"]
                if ctx.timer is not None:
                    ctx.timer.cancel()
                    ctx.timer = None
                headers = message.get("headers") or ()
                for name, value in headers:
                    if name == b"content-type":
                        ctx.content_type = value
                        if ctx.first_at is None and value.startswith(b"application/x-ndjson"):
                            ctx.first_at = loop.time()
                        break
                message = {**message, "headers": [*headers, id_header]}  # never the response's own list
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if ctx.abort_reason is None:
                raise
            ctx.task.uncancel()
            gw.metrics.aborted(ctx.abort_reason)
            await self._end_aborted(ctx, scope, receive, send, id_header)
        except BaseException:
            ctx.status = ctx.status if ctx.response_started else 500
            raise
        finally:
            if ctx.timer is not None:
                ctx.timer.cancel()
            if ctx.held:
                gw.limiter.leave(ctx.ident)
            if api:
                gw.inflight.discard(ctx)
                if gw.draining and not gw.inflight:
                    gw.drained.set()
            self._finish(ctx, scope)

    async def _end_aborted(self, ctx: RequestContext, scope: Scope, receive: Receive, send: Send,
                           id_header: tuple[bytes, bytes]) -> None:
        """Finish a request the gateway ended (shutdown or timeout) in its caller's format."""
        message = ctx.abort_message
        try:
            if not ctx.response_started:
                headers = {"Retry-After": "5"} if ctx.abort_status == 503 else None
                response = render(ctx.path, ctx.abort_status, message, headers=headers,
                                  code="shutting_down" if ctx.abort_reason == "shutdown" else "timeout")
                response.raw_headers.append(id_header)
                ctx.status = ctx.abort_status
                await response(scope, receive, send)
                return
            if ctx.content_type.startswith(b"text/event-stream"):
                body = (b"data: " + json.dumps(error_body(message, "api_error", ctx.abort_reason)).encode()
                        + b"\n\ndata: [DONE]\n\n")
            elif ctx.content_type.startswith(b"application/x-ndjson"):
                body = json.dumps({"error": message}).encode() + b"\n"
            else:
                body = b""
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:  # noqa: BLE001 - the client may be gone already
            pass

    @staticmethod
    def _route(scope: Scope) -> str:
        """A bounded label: the path of a matched route (its template when it has parameters), a
        known API path for requests refused before routing, else "other"."""
        path = scope["path"]
        route = scope.get("route")
        template = getattr(route, "path", None)
        if template is None:
            return path if path in KNOWN_PATHS else "other"
        if "{" not in template:
            return path
        fixed = template.split("{", 1)[0]
        at = path.find(fixed)
        return path[:at] + template if at >= 0 else template

    def _finish(self, ctx: RequestContext, scope: Scope) -> None:
        """Record the request's metrics and write its log line."""
        gw = self.gateway
        path = ctx.path
        now = asyncio.get_running_loop().time()
        route = self._route(scope)
        served = ctx.served
        backend = served.get("backend") or "none"
        done = served.get("done") or {}
        tokens_in = int(done.get("prompt_eval_count") or 0)
        tokens_out = int(done.get("eval_count") or 0)
        duration = now - ctx.started
        ttft = ctx.first_at - ctx.started if ctx.first_at is not None else None
        status = ctx.status or 500
        gw.metrics.record(route, ctx.method, status, backend, served.get("kind") or "none", duration, ttft,
                          tokens_in, tokens_out)
        if path == "/health" or path == "/metrics" or not access_log.isEnabledFor(logging.INFO):
            return  # polled every few seconds: metrics only
        line: dict[str, Any] = {"id": ctx.id, "method": ctx.method, "route": route, "status": status,
                                "model": ctx.model, "backend": served.get("backend"),
                                "duration_ms": round(duration * 1000, 1),
                                "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
                                "tokens_in": tokens_in, "tokens_out": tokens_out, "client": ctx.client,
                                "key": ctx.key}
        if ctx.abort_reason:
            line["aborted"] = ctx.abort_reason
        if self.log_content:
            line["prompt"] = ctx.prompt
            line["completion"] = "".join(ctx.completion) if ctx.completion is not None else None
        # makeRecord + handle: a log line without logging's caller lookup (a third of its cost).
        access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, _dumps(line), (), None))
