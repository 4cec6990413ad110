"""Ollama's native API, passed through to whichever backend has the model."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ollabridge import __version__
from ollabridge.api.ollama import convert
from ollabridge.api.ollama.protocol import (NativeChatRequest, NativeEmbeddingsRequest, NativeEmbedRequest,
                                            NativeError, NativeShowRequest)
from ollabridge.api.streaming import NDJSONResponse, start, unless_gone
from ollabridge.edge import context as edge
from ollabridge.errors import BadRequest, Forbidden
from ollabridge.gateway import Gateway

router = APIRouter(prefix="/api", tags=["Ollama native"])

_ERRORS = {400: {"model": NativeError}, 403: {"model": NativeError}, 404: {"model": NativeError},
           502: {"model": NativeError}, 503: {"model": NativeError}}


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _as_sent(body) -> dict:
    return body.model_dump(exclude_unset=True, by_alias=True)


@router.post("/chat", responses=_ERRORS)
async def chat(body: NativeChatRequest, request: Request):
    """Chat; NDJSON stream (default) or one object with `stream: false`, as the backend wrote it."""
    payload = _as_sent(body)
    gateway = _gateway(request)
    stream = gateway.router.chat(payload, edge.track(request, body.model))
    if gateway.settings.log_content:
        stream = edge.with_content(request, payload.get("messages"), stream)
    first = await unless_gone(start(stream), request.receive)
    if not body.stream:
        await stream.aclose()
        return JSONResponse(first)
    return NDJSONResponse(first, stream)


@router.get("/tags")
async def tags(request: Request):
    """Every model any backend serves, in Ollama's format."""
    return convert.tags_response(await _gateway(request).router.models())


@router.post("/embed", responses=_ERRORS)
async def embed(body: NativeEmbedRequest, request: Request):
    return await _gateway(request).router.call("embed", _as_sent(body), edge.track(request, body.model))


@router.post("/embeddings", responses=_ERRORS)
async def embeddings(body: NativeEmbeddingsRequest, request: Request):
    return await _gateway(request).router.call("embeddings", _as_sent(body), edge.track(request, body.model))


@router.post("/show", responses=_ERRORS)
async def show(body: NativeShowRequest, request: Request):
    model = body.model or body.name
    if not model:
        raise BadRequest("Missing required field: 'model'.", param="model")
    return await _gateway(request).router.call("show", {**_as_sent(body), "model": model}, edge.track(request, model))


@router.get("/version")
async def version(request: Request):
    """The gateway's Ollama's version when it answers, else the gateway's own."""
    return {"version": await _gateway(request).ollama.version() or __version__}


@router.get("/ps")
async def ps(request: Request):
    """Models loaded in memory on every backend."""
    return {"models": await _gateway(request).router.loaded()}


def _refuse(request: Request) -> None:
    name = request.url.path.rsplit("/", 1)[-1]
    raise Forbidden(f"'{name}' changes the models on the server and is not allowed on the public API.")


for _name, _method in [("pull", "POST"), ("push", "POST"), ("create", "POST"), ("copy", "POST"),
                      ("delete", "DELETE")]:
    router.add_api_route(f"/{_name}", _refuse, methods=[_method], status_code=403, summary=f"Refused: {_name}",
                         operation_id=f"refuse_{_name}", responses={403: {"model": NativeError}})
