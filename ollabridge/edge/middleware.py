"""The API's edge: one ASGI middleware for what every request goes through.

- a request id (the caller's `X-Request-ID` when sane, else a new one), returned as `X-Request-ID`;
- API keys on `/v1`, `/ollama/v1` and `/ollama/api` (`Authorization: Bearer` or `X-API-Key`) when
  any key is configured or minted; 401 in the caller's error format;
- rate limits per key, or per client address without one: requests a minute and requests in
  flight; 429 with `Retry-After`;
- a total timeout for answers that have not begun (non-streamed ones), 504;
- graceful shutdown: while draining, new API requests get 503; at the drain deadline the gateway
  ends what is still running with an error (an SSE error event and `[DONE]`, an NDJSON error line);
- metrics (edge/metrics.py) and one structured log line per request (edge/access_log.py), without prompt or
  completion text unless OLLABRIDGE_LOG_CONTENT=1.

Pure ASGI (no BaseHTTPMiddleware) and no I/O: a few dict lookups per request.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollabridge.api.errors import ndjson_error_line, render
from ollabridge.edge import access_log
from ollabridge.edge.auth import api_key
from ollabridge.edge.context import LOOPBACK, REQUEST_ID, RequestContext, client_address
from ollabridge.edge.guesses import TooManyGuesses
from ollabridge.errors import GatewayError

API_PREFIXES = ("/v1/", "/ollama/v1/", "/ollama/api/")
DOUBLED = ("/v1/v1/", "/ollama/v1/v1/")
# Requests that hold a backend while they run: these count against the in-flight limit.
GENERATION = frozenset(prefix + path for prefix in ("", "/ollama") for path in (
    "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/embeddings")) | frozenset({
    "/ollama/api/chat", "/ollama/api/generate", "/ollama/api/embed", "/ollama/api/embeddings"})
# Other replicas' requests for the GPU nodes held here (api/internal_routes.py, its own credential):
# no keys or limits of the callers' (the forwarding replica applied them), but the drain's 503 and wait.
INTERNAL = "/internal/"
# Other routes that get a log line and metrics (the web UI's own requests get neither).
OBSERVED = ("/admin/", "/device/", "/health", "/metrics", "/ollama/status", "/node/", INTERNAL)
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


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
        client = scope.get("client")
        return client_address(client[0] if client else "", forwarded, self.hops)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(DOUBLED):  # a client that appends /v1 to a base URL ending in /v1
            path = path.replace("/v1/v1/", "/v1/", 1)
            scope = {**scope, "path": path, "raw_path": path.encode()}
        api = path.startswith(API_PREFIXES)
        if not api and not path.startswith(OBSERVED):
            await self.app(scope, receive, send)  # the web UI and its assets
            return
        gw = self.gateway
        loop = asyncio.get_running_loop()
        rid = auth = x_api_key = forwarded = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"x-api-key":
                x_api_key = value
            elif name == b"x-request-id":
                rid = _sane_id(value)
            elif name == b"x-forwarded-for":
                forwarded = value.decode("latin-1") if forwarded is None else f"{forwarded},{value.decode('latin-1')}"
        ctx = RequestContext(rid or os.urandom(8).hex(), scope["method"], path, loop.time())
        scope["ollabridge"] = ctx
        REQUEST_ID.set(ctx.id)  # this request's task only
        ctx.client = self.client_address(scope, forwarded)
        id_header = (b"x-request-id", ctx.id.encode())

        async def refuse(status: int, message: str, headers: dict[str, str] | None = None,
                         type_: str | None = None, code: str | None = None) -> None:
            response = render(path, status, message, type_=type_, code=code, headers=headers)
            response.raw_headers.append(id_header)
            ctx.status = status
            await response(scope, receive, send)

        drain = gw.drain
        internal = path.startswith(INTERNAL)
        if drain.draining and (api or internal or path == "/health"):
            await refuse(503, "The gateway is shutting down; retry in a few seconds.",
                         {"Retry-After": "5", "Connection": "close"}, code="shutting_down")
            self._finish(ctx, scope)
            return
        generation = False
        if api:
            keys = gw.keys
            key = None
            secret = api_key(auth, x_api_key)
            if keys.enabled:
                key = keys.check(secret) if secret else None
                if secret:
                    try:  # wrong keys count against the address (edge/guesses.py), with the admin token's
                        gw.guesses.guard(ctx.client, key is not None)
                    except TooManyGuesses as exc:
                        await refuse(exc.status, exc.message, exc.headers, code=exc.code)
                        self._finish(ctx, scope)
                        return
                if key is None:
                    gw.metrics.auth_failures += 1
                    # Requests without a valid key spend the address's budget too.
                    retry = await gw.limiter.spend("ip:" + ctx.client, self.rpm)
                    if retry:
                        gw.metrics.limited("ip", "rpm")
                        await refuse(429, f"Rate limit reached: {self.rpm} requests a minute from this address. "
                                          f"Retry in {retry}s.", {"Retry-After": str(retry)},
                                     code="rate_limit_exceeded")
                    else:
                        if not secret:
                            why = "A valid API key is required: send it as 'Authorization: Bearer <key>' or " \
                                  "'X-API-Key: <key>'."
                        elif gw.pairing.is_admin(secret):
                            why = "The admin token is not an API key; mint one with POST /admin/keys."
                        else:
                            why = "That API key is not valid."
                        # X-Should-Retry: the Stainless SDKs' hint; Claude Code otherwise retries a
                        # 401 for minutes before saying the key is wrong.
                        await refuse(401, why, {"WWW-Authenticate": "Bearer", "X-Should-Retry": "false"},
                                     code="invalid_api_key")
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
            retry = await gw.limiter.spend(ident, rpm)
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
            ctx.weight = key.weight if key is not None else 1.0  # its turns in the router's queue
            ctx.task = asyncio.current_task()
            drain.enter(ctx)
            if self.request_timeout > 0:
                ctx.timer = loop.call_at(ctx.started + self.request_timeout, ctx.expire, self.request_timeout)

        if internal:
            ctx.task = asyncio.current_task()
            drain.enter(ctx)

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
            if api or internal:
                drain.leave(ctx)
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
            if ctx.encoder is not None:
                body = ctx.encoder.error(GatewayError(message, status=ctx.abort_status, code=ctx.abort_reason))
            elif ctx.content_type.startswith(b"application/x-ndjson"):
                body = ndjson_error_line(message)
            else:
                body = b""
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:  # noqa: BLE001 - the client may be gone already
            pass

    def _finish(self, ctx: RequestContext, scope: Scope) -> None:
        access_log.finish(ctx, scope, self.gateway.metrics, asyncio.get_running_loop().time(), self.log_content)
