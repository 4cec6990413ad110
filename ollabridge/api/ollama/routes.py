"""Ollama's native API, passed through to whichever backend has the model, and `GET /ollama/`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ollabridge import __version__
from ollabridge.api.ollama import convert
from ollabridge.api.ollama.protocol import (NativeChatRequest, NativeEmbeddingsRequest, NativeEmbedRequest,
                                            NativeError, NativeGenerateRequest, NativeShowRequest, NativeVersion)
from ollabridge.api.streaming import NDJSONResponse, start, unless_gone
from ollabridge.edge import context as edge
from ollabridge.errors import BadRequest, Forbidden
from ollabridge.gateway import Gateway

router = APIRouter(prefix="/api", tags=["Ollama native"])
root = APIRouter(tags=["Ollama native"])


@root.api_route("/ollama", methods=["GET", "HEAD"], response_class=PlainTextResponse, include_in_schema=False)
@root.api_route("/ollama/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def running():
    """What Ollama answers at its root (clients probe it): `Ollama is running`."""
    return "Ollama is running"

_ERRORS = {400: {"model": NativeError}, 403: {"model": NativeError}, 404: {"model": NativeError},
           502: {"model": NativeError}, 503: {"model": NativeError}}


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _as_sent(body) -> dict:
    return body.model_dump(exclude_unset=True, by_alias=True)


async def _native(request: Request, body, stream):
    """Answer a native stream as Ollama does: NDJSON, or with `stream: false` its one object."""
    if request.app.state.gateway.settings.log_content:
        stream = edge.with_content(request, getattr(body, "messages", None) or getattr(body, "prompt", None), stream)
    first = await unless_gone(start(stream), request.receive)
    if not body.stream:
        await stream.aclose()
        return JSONResponse(first)
    return NDJSONResponse(first, stream)


@router.post("/chat", responses=_ERRORS)
async def chat(body: NativeChatRequest, request: Request):
    """Chat; NDJSON stream (default) or one object with `stream: false`, as the backend wrote it."""
    gateway = _gateway(request)
    model = await gateway.router.resolve_model(body.model)
    stream = gateway.router.chat({**_as_sent(body), "model": model}, edge.track(request, model))
    return await _native(request, body, stream)


@router.post("/generate", responses=_ERRORS)
async def generate(body: NativeGenerateRequest, request: Request):
    """Generate from a prompt (suffix, system, template, raw, images, format, options, think,
    keep_alive, context), on any backend with the model: GPU nodes too. `prompt: ""` loads the model,
    with `keep_alive: 0` unloads it, as Ollama does."""
    gateway = _gateway(request)
    model = await gateway.router.resolve_model(body.model)
    stream = gateway.router.generate({**_as_sent(body), "model": model}, edge.track(request, model))
    return await _native(request, body, stream)


@router.api_route("/tags", methods=["GET", "HEAD"])
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


@router.api_route("/version", methods=["GET", "HEAD"], response_model=NativeVersion)
async def version(request: Request):
    """The lowest Ollama version among the backends that report one (as Open WebUI reads it, dotted
    integers), else the gateway's own."""
    backends = _gateway(request).router.backends
    reported = await asyncio.gather(*(b.ollama_version() for b in backends))
    return {"version": convert.lowest_version(reported) or __version__}


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
