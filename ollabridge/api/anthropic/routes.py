"""Anthropic Messages routes: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

`x-api-key` counts as the API key beside `Authorization: Bearer` (the edge reads both);
`anthropic-version`, `anthropic-beta` and `?beta=true` are accepted and change nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ollabridge.api.anthropic import convert
from ollabridge.api.anthropic.protocol import CountTokensRequest, AnthropicError, Message, MessagesRequest, TokenCount
from ollabridge.api.anthropic.sse import MessageSSE
from ollabridge.api.sse_response import SSEResponse
from ollabridge.api.streaming import SSE_EVENT_SCHEMA, collect, unless_gone
from ollabridge.edge import context as edge

router = APIRouter(tags=["Anthropic"])

_ERRORS = {status: {"model": AnthropicError} for status in (400, 404, 413, 502, 503)}
_EVENTS = ("An Anthropic `message`, or with `stream: true` its events: message_start, content_block_start / "
           "_delta / _stop, message_delta, message_stop (and ping).")


@router.post("/v1/messages", response_model=Message, responses={
    **_ERRORS, 200: {"description": _EVENTS, "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}})
async def messages(body: MessagesRequest, request: Request):
    """Chat with any served model as Claude Code and the Anthropic SDKs do (streamed or not)."""
    gateway = request.app.state.gateway
    model = await gateway.router.resolve_model(body.model)
    payload = convert.messages_request_to_ollama(body, model)
    stream = gateway.router.chat(payload, edge.track(request, model), relax_think=True)
    if gateway.settings.log_content:
        stream = edge.with_content(request, payload, stream)
    if body.stream:
        return SSEResponse(stream, MessageSSE(model), gateway.settings.keepalive_s, request.url.path,
                           edge.context(request))
    return JSONResponse(convert.aggregate_message(await unless_gone(collect(stream), request.receive), model))


@router.post("/v1/messages/count_tokens", response_model=TokenCount, responses=_ERRORS)
async def count_tokens(body: CountTokensRequest):
    """An estimate of the prompt's tokens: its characters / 4, as Ollama estimates them (no backend is
    asked, so it answers at once even while every node is busy)."""
    return {"input_tokens": convert.estimate_tokens(body)}
