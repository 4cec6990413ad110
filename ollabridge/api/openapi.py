"""Make /openapi.json say what the gateway really answers (checked by tests/test_schemathesis.py).

FastAPI documents 422 for invalid requests, but the gateway answers 400 in the caller's format
(ollabridge/api/errors.py); the edge (ollabridge/edge/) may answer 401, 429, 503 and 504 on
every API route; the device flow's errors are `{"error": ...}` objects. Routes keep documenting
their own answers; this adds what is common to all of them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ollabridge.edge.middleware import API_PREFIXES
from ollabridge.api.errors import is_anthropic_path, is_openai_path

NATIVE_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
OPENAI_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
ANTHROPIC_ERROR_REF = {"$ref": "#/components/schemas/AnthropicError"}

EDGE = {401: "Missing or wrong API key (when keys are configured)",
        429: "Rate limit reached (see Retry-After)",
        503: "No backend is up, all are busy past the queue, or the gateway is shutting down (see Retry-After)",
        504: "A backend or the whole request took longer than its timeout"}
DEVICE = {400: "Invalid request", 401: "Missing or wrong admin token", 404: "Unknown code or node",
          409: "Code already decided", 410: "Code expired",
          429: "Too many pairing requests or wrong tries from this address (see Retry-After)"}


def _error(path: str, description: str) -> dict[str, Any]:
    schema = ANTHROPIC_ERROR_REF if is_anthropic_path(path) else OPENAI_ERROR_REF if is_openai_path(path) \
        else NATIVE_ERROR
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        from ollabridge.api.anthropic.protocol import AnthropicError
        from ollabridge.api.openai.protocol import ErrorResponse

        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorResponse, AnthropicError):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, part in definition.pop("$defs", {}).items():
                components.setdefault(name, part)
            components.setdefault(model.__name__, definition)
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if responses.pop("422", None) is not None or "requestBody" in operation or operation.get("parameters"):
                    responses.setdefault("400", _error(path, "Invalid request"))
                extra: dict[int, str] = {}
                if path.startswith(API_PREFIXES):
                    extra = EDGE
                elif path.startswith("/device/"):
                    extra = DEVICE
                elif path == "/health":
                    extra = {503: "The gateway is shutting down"}
                for status, description in extra.items():
                    responses.setdefault(str(status), _error(path, description))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
