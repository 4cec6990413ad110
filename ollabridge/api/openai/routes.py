"""OpenAI-compatible routes: `/v1/chat/completions`, `/v1/responses`, `/v1/completions`, `/v1/models`,
`/v1/embeddings`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ollabridge.api.openai import completions, convert, responses_convert
from ollabridge.api.openai.sse import ChatSSE
from ollabridge.api.sse_response import SSEResponse
from ollabridge.api.openai.protocol import (ChatCompletion, ChatCompletionRequest,
                                            EmbeddingRequest, EmbeddingResponse, ErrorResponse, ModelList)
from ollabridge.api.openai.responses_protocol import Response, ResponsesRequest
from ollabridge.api.openai.responses_sse import ResponseSSE
from ollabridge.api.streaming import SSE_EVENT_SCHEMA, collect, unless_gone
from ollabridge.edge import context as edge
from ollabridge.errors import ModelNotFound
from ollabridge.gateway import Gateway

router = APIRouter(tags=["OpenAI"])

_ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
           502: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={
    **_ERRORS, 200: {"description": "A chat.completion, or with `stream: true` an SSE stream of "
                     "chat.completion.chunk events ending in `data: [DONE]`.",
                     "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}})
async def chat_completions(body: ChatCompletionRequest, request: Request):
    """Chat with any served model, streamed (SSE) or not."""
    gateway = _gateway(request)
    model = await gateway.router.resolve_model(body.model)
    payload = convert.chat_request_to_ollama(body, model)
    stream = gateway.router.chat(payload, edge.track(request, model))
    if gateway.settings.log_content:
        stream = edge.with_content(request, payload, stream)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = ChatSSE(convert.StreamTranslator(model, include_usage))
        # The first chunk is awaited inside, with keep-alives meanwhile (OLLABRIDGE_KEEPALIVE; 0: none).
        return SSEResponse(stream, encoder, gateway.settings.keepalive_s, request.url.path,
                           edge.context(request))
    return JSONResponse(convert.aggregate_completion(await unless_gone(collect(stream), request.receive), model))


@router.post("/v1/responses", response_model=Response, responses={
    **_ERRORS, 200: {"description": "A Response, or with `stream: true` its typed SSE events (response.created "
                     "... response.completed, or response.failed), each with a sequence_number.",
                     "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}})
async def responses(body: ResponsesRequest, request: Request):
    """The Responses API, stateless as Ollama serves it (what Codex CLI speaks)."""
    gateway = _gateway(request)
    model = await gateway.router.resolve_model(body.model)
    payload, namespaced = responses_convert.responses_request_to_ollama(body, model)
    stream = gateway.router.chat(payload, edge.track(request, model), relax_think=True)
    if gateway.settings.log_content:
        stream = edge.with_content(request, payload, stream)
    if body.stream:
        return SSEResponse(stream, ResponseSSE(body, model, namespaced), gateway.settings.keepalive_s,
                           request.url.path, edge.context(request))
    return JSONResponse(responses_convert.aggregate_response(await unless_gone(collect(stream), request.receive), body, model, namespaced))


@router.post("/v1/completions", response_model=completions.Completion, responses={
    **_ERRORS, 200: {"description": "A text_completion, or with `stream: true` an SSE stream of them ending "
                     "in `data: [DONE]`.", "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}})
async def text_completions(body: completions.CompletionRequest, request: Request):
    """Legacy completions on Ollama's generate: a prompt, and `suffix` for fill-in-the-middle."""
    gateway = _gateway(request)
    model = await gateway.router.resolve_model(body.model)
    payload = completions.completion_request_to_ollama(body, model)
    stream = gateway.router.generate(payload, edge.track(request, model))
    if gateway.settings.log_content:
        stream = edge.with_content(request, payload.get("prompt"), stream)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SSEResponse(stream, completions.CompletionSSE(model, include_usage), gateway.settings.keepalive_s,
                           request.url.path, edge.context(request))
    return JSONResponse(completions.aggregate_completion(await unless_gone(collect(stream), request.receive), model))


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request):
    """Every model any backend serves (the gateway's Ollama, upstreams and GPU nodes)."""
    return JSONResponse(convert.models_to_openai(await _gateway(request).router.models()))


@router.get("/v1/models/{model:path}", responses=_ERRORS)
async def get_model(model: str, request: Request):
    """One model (`name` finds `name:latest`, as Ollama names it), or 404 naming the models that exist."""
    listing = convert.models_to_openai(await _gateway(request).router.models())
    for card in listing["data"]:
        if card["id"] in (model, f"{model}:latest"):
            return JSONResponse(card)
    raise ModelNotFound(model, [card["id"] for card in listing["data"]])


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS)
async def embeddings(body: EmbeddingRequest, request: Request):
    """Embed a string or a list of strings."""
    gateway = _gateway(request)
    model = await gateway.router.resolve_model(body.model)
    result = await gateway.router.call("embed", convert.embedding_request_to_ollama(body, model),
                                       edge.track(request, model))
    return JSONResponse(convert.embedding_response(result, model, body.encoding_format))
