"""Errors in the caller's format — Anthropic's on `/v1/messages`, OpenAI's on the rest of `/v1`,
`{"error": ...}` natively — as a response, or as an SSE event or NDJSON line once a stream has begun."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ollabridge.api.anthropic.convert import error_body as anthropic_error_body
from ollabridge.api.openai.convert import error_body
from ollabridge.errors import GatewayError
from ollabridge.jsonwire import dumps

log = logging.getLogger("ollabridge")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}


ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")


def is_anthropic_path(path: str) -> bool:
    """Anthropic's Messages API, at the root or under /ollama (where Claude Code's base URL points)."""
    return path.endswith(ANTHROPIC_PATHS) and path.removesuffix("/count_tokens").removesuffix("/v1/messages") in ("", "/ollama")


def is_openai_path(path: str) -> bool:
    return (path.startswith("/v1/") or path.startswith("/ollama/v1/")) and not is_anthropic_path(path)


def error_payload(path: str, status: int, message: str, *, type_: str | None = None, code: str | None = None,
                  param: str | None = None) -> dict[str, Any]:
    """The error body a caller of `path` reads: Anthropic's on `/v1/messages`, OpenAI's on the rest of
    `/v1`, `{"error": ...}` natively."""
    if is_anthropic_path(path):
        return anthropic_error_body(status, message)
    if is_openai_path(path):
        return error_body(message, type_ or _TYPES.get(status, "api_error"), code, param)
    return {"error": message}


def render(path: str, status: int, message: str, *, type_: str | None = None, code: str | None = None,
           param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error response in the caller's format."""
    return JSONResponse(error_payload(path, status, message, type_=type_, code=code, param=param),
                        status_code=status, headers=headers)


def render_gateway_error(path: str, exc: GatewayError) -> JSONResponse:
    return render(path, exc.status, exc.message, type_=exc.type, code=exc.code, param=exc.param,
                  headers=exc.headers)


def sse_error_event(message: str, type_: str = "api_error", code: str | None = None) -> bytes:
    """A failure after an SSE stream began: one `data:` event with OpenAI's error object."""
    return b"data: " + dumps(error_body(message, type_, code)) + b"\n\n"


def ndjson_error_line(message: str) -> bytes:
    """A failure after an NDJSON stream began: one `{"error": ...}` line, as Ollama writes it."""
    return dumps({"error": message}) + b"\n"


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable message and the offending parameter from pydantic's error list."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"The request body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing" and param:
        return f"Missing required parameter: '{param}'.", param
    where = f" at '{param}'" if param else ""
    return f"Invalid request{where}: {first.get('msg', 'bad value')}.", param


def install(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return render_gateway_error(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(list(exc.errors()))
        return render(request.url.path, 400, message, param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return render(request.url.path, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return render(request.url.path, 500, f"Internal error: {type(exc).__name__}")
