"""The in-box engine's HTTP app: Ollama's REST API over one llama.cpp model.

Errors are Ollama-shaped ``{"error": "..."}``: 400 for bad JSON / missing or invalid fields,
404 for an unknown model, 501 for model management (pull of another model, push, create, copy,
delete, blobs) which the in-box engine cannot do. Pulling the served model itself succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ollabridge.asgi import as_json, until_disconnect

from . import shapes
from .llm import Job, Runner, Stats
from .model import (ModelFile, default_cache_dir, details_from_metadata, model_info_from_metadata,
                    name_matches, resolve_model)
from .sampling import grammar_for_format, sampling_from_options
from .schemas import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, ShowRequest

log = logging.getLogger("ollabridge.engine")
NDJSON = "application/x-ndjson"
READ_ONLY = ("the OllaBridge in-box engine serves one fixed model and cannot {what} models; "
             "point OLLAMA_BASE_URL at a real Ollama to manage models")


def _err(status: int, message: str) -> JSONResponse:
    return JSONResponse(shapes.error(message), status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    first = (exc.errors() or [{}])[0]
    kind, loc = first.get("type", ""), [str(p) for p in first.get("loc", ()) if p != "body"]
    if kind == "json_invalid":
        return f"invalid JSON body: {first.get('ctx', {}).get('error', first.get('msg', ''))}"
    if kind == "missing" and not loc:
        return "missing request body"
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return f"{'.'.join(loc)}: {msg}" if loc else msg


def _watch_disconnect(request: Request, job: Job) -> asyncio.Task:
    """Cancel `job` as soon as the client goes away (uvicorn reports http.disconnect)."""
    async def watch() -> None:
        await until_disconnect(request.receive)
        job.cancel()
    return asyncio.create_task(watch())


class JSONBodies:
    """Treat every request body as JSON whatever its Content-Type, as Ollama does (`curl -d` sends form)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "DELETE"):
            scope = {**scope, "headers": as_json(scope["headers"])}
        await self.app(scope, receive, send)


def create_app(model: ModelFile | str = "", *, cache_dir: Path | None = None, n_ctx: int = 4096,
               n_threads: int | None = None, embed_ctx: int = 512, runner: Runner | None = None) -> FastAPI:
    """Build the app. The model is resolved and loaded at startup (lifespan), not here.

    `model` is a resolved ModelFile or a spec for `resolve_model`; `runner` injects a ready Runner.
    """
    state: dict[str, Any] = {"runner": runner}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if state["runner"] is None:
            started = time.perf_counter()
            mf = model if isinstance(model, ModelFile) else await asyncio.to_thread(
                resolve_model, model, cache_dir or default_cache_dir())
            r = Runner(mf, n_ctx=n_ctx, n_threads=n_threads, embed_ctx=embed_ctx)
            await asyncio.to_thread(r.load)
            state["runner"] = r
            log.info("in-box engine: model %s from %s (%.0f MB), loaded in %.2fs (llama %.2fs), "
                     "n_ctx %d, %d threads", mf.name, mf.path, mf.path.stat().st_size / 1e6,
                     time.perf_counter() - started, r.load_seconds, r.n_ctx, r.n_threads)
        try:
            yield
        finally:
            state["runner"].shutdown()

    app = FastAPI(title="OllaBridge in-box engine", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    app.add_middleware(JSONBodies)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return _err(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _err(exc.status_code, str(exc.detail).lower() if exc.status_code in (404, 405) else str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(_r: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return _err(500, str(exc) or type(exc).__name__)

    def served() -> Runner:
        return state["runner"]

    def check(name: str) -> JSONResponse | None:
        if not name:
            return _err(400, "model is required")
        if not name_matches(name, served().model.name):
            return _err(404, shapes.not_found(name))
        return None

    def details() -> dict:
        r = served()
        return details_from_metadata(r.metadata, r.n_params)

    @app.api_route("/", methods=["GET", "HEAD"])
    async def root() -> PlainTextResponse:
        return PlainTextResponse("Ollama is running")

    @app.api_route("/api/version", methods=["GET", "HEAD"])
    async def version() -> dict:
        return {"version": shapes.VERSION}

    @app.api_route("/api/tags", methods=["GET", "HEAD"])
    async def tags() -> dict:
        m = served().model
        st = m.path.stat()
        return {"models": [shapes.model_entry(m.name, m.digest, st.st_size, st.st_mtime, details(),
                                               m.notice)]}

    @app.get("/api/ps")
    async def ps() -> dict:
        r = served()
        return {"models": [shapes.ps_entry(r.model.name, r.model.digest, r.model.path.stat().st_size,
                                           details(), r.n_ctx)]}

    @app.post("/api/show")
    async def show(req: ShowRequest) -> JSONResponse:
        r = served()
        if not req.model:
            return _err(400, "model is required")
        if not name_matches(req.model, r.model.name):
            return _err(404, f"model '{req.model}' not found")
        caps = ["completion", "embedding"]
        if r.style == "jinja" and "tools" in r.template:
            caps.append("tools")
        meta = r.metadata
        return JSONResponse(shapes.show_response(
            path=str(r.model.path), template=r.template, stops=r.stop_words, num_ctx=r.n_ctx,
            details=details(), model_info=model_info_from_metadata(meta, r.n_params), capabilities=caps,
            modified=r.model.path.stat().st_mtime, notice=r.model.notice, license=meta.get("general.license", "")))

    async def respond(request: Request, req: Any, job: Job, events: AsyncIterator, *, chat: bool,
                      started: int) -> Any:
        """Stream NDJSON or collect one JSON body from a generation's events."""
        chunk = shapes.chat_chunk if chat else shapes.generate_chunk
        tool_buf = shapes.ToolCallBuffer(getattr(req, "tools", None))

        def final(stats: Stats, text: str = "") -> dict:
            total = time.perf_counter_ns() - started
            if chat:
                rest, calls = tool_buf.finish()
                return shapes.chat_final(req.model, stats, total, text + rest if not calls else "", calls)
            return shapes.generate_final(req.model, stats, total, text)

        if req.stream is False:
            watcher, parts = _watch_disconnect(request, job), []
            try:
                async for item in events:
                    if isinstance(item, Stats):
                        return JSONResponse(final(item, "".join(parts)))
                    parts.append(tool_buf.feed(item) if chat else item)
            except Exception as exc:
                log.exception("generation failed")
                return _err(500, str(exc) or type(exc).__name__)
            finally:
                watcher.cancel()
                job.cancel()
            return _err(500, "generation ended without a result")

        async def body() -> AsyncIterator[bytes]:
            watcher = _watch_disconnect(request, job)
            try:
                async for item in events:
                    if isinstance(item, Stats):
                        last = final(item)
                        if chat and last["message"]["content"]:  # held-back text that was not a tool call
                            yield shapes.ndjson(chunk(req.model, last["message"]["content"]))
                            last["message"]["content"] = ""
                        yield shapes.ndjson(last)
                        return
                    text = tool_buf.feed(item) if chat else item
                    if text:
                        yield shapes.ndjson(chunk(req.model, text))
            except Exception as exc:
                log.exception("generation failed")
                yield shapes.ndjson(shapes.error(str(exc) or type(exc).__name__))
            finally:
                watcher.cancel()
                job.cancel()

        return StreamingResponse(body(), media_type=NDJSON)

    def load_reply(req: Any, chat: bool) -> Any:
        body = shapes.load_response(req.model, chat)
        if req.stream is False:
            return JSONResponse(body)
        return StreamingResponse(iter([shapes.ndjson(body)]), media_type=NDJSON)

    async def run(request: Request, req: Any, build_prompt: Any, *, chat: bool, started: int) -> Any:
        """Render the prompt and sampling of a chat or generate request, then answer it (400 on bad options)."""
        r = served()
        try:
            prompt = build_prompt(r)
            sampling, grammar = sampling_from_options(req.options), grammar_for_format(req.format)
        except ValueError as exc:
            return _err(400, str(exc))
        job = r.new_job()
        return await respond(request, req, job, r.generate(job, prompt, sampling, grammar), chat=chat, started=started)

    @app.post("/api/chat")
    async def chat(req: ChatRequest, request: Request) -> Any:
        started = time.perf_counter_ns()
        if (problem := check(req.model)) is not None:
            return problem
        if not req.messages:
            return load_reply(req, chat=True)
        return await run(request, req, lambda r: r.chat_prompt([m.model_dump() for m in req.messages], req.tools),
                         chat=True, started=started)

    @app.post("/api/generate")
    async def generate(req: GenerateRequest, request: Request) -> Any:
        started = time.perf_counter_ns()
        if (problem := check(req.model)) is not None:
            return problem
        if not req.prompt and not req.context:
            return load_reply(req, chat=False)
        return await run(request, req, lambda r: r.generate_prompt(req.prompt or "", req.system, req.raw, req.context),
                         chat=False, started=started)

    @app.post("/api/embed")
    async def embed(req: EmbedRequest) -> Any:
        started = time.perf_counter_ns()
        if (problem := check(req.model)) is not None:
            return problem
        texts = ([req.input] if req.input else []) if isinstance(req.input, str) else list(req.input)
        vectors, count = [], 0
        if texts:
            try:
                vectors, count = await served().embed(texts, truncate=req.truncate is not False)
            except ValueError as exc:
                return _err(400, str(exc))
        return {"model": req.model, "embeddings": [shapes.l2_normalize(v, req.dimensions) for v in vectors],
                "total_duration": time.perf_counter_ns() - started, "load_duration": 0,
                "prompt_eval_count": count}

    @app.post("/api/embeddings")
    async def embeddings(req: EmbeddingsRequest) -> Any:
        if (problem := check(req.model)) is not None:
            return problem
        if not req.prompt:
            return {"embedding": []}
        vectors, _count = await served().embed([req.prompt])
        return {"embedding": vectors[0]}

    @app.post("/api/pull")
    async def pull(request: Request) -> Any:
        try:
            data = await request.json()
        except ValueError:
            return _err(400, "invalid JSON body")
        name = (data or {}).get("model") or (data or {}).get("name") or ""
        if name and name_matches(name, served().model.name):
            if data.get("stream") is False:
                return {"status": "success"}
            return StreamingResponse(iter([shapes.ndjson({"status": "success"})]), media_type=NDJSON)
        return _err(501, READ_ONLY.format(what="pull"))

    def read_only(what: str):
        async def handler() -> JSONResponse:
            return _err(501, READ_ONLY.format(what=what))
        return handler

    for path, method, what in (("/api/push", "POST", "push"), ("/api/create", "POST", "create"),
                               ("/api/copy", "POST", "copy"), ("/api/delete", "DELETE", "delete"),
                               ("/api/blobs/{digest}", "POST", "upload blobs for"),
                               ("/api/blobs/{digest}", "HEAD", "upload blobs for")):
        app.add_api_route(path, read_only(what), methods=[method], include_in_schema=False)

    return app
