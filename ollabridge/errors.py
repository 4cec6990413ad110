"""Errors that cross layers. The API edge turns each into its caller's wire format."""

from __future__ import annotations

import json


class GatewayError(Exception):
    """An error with an HTTP status, an OpenAI error type and code."""

    status = 500
    type = "server_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    param = "model"

    def __init__(self, model: str, available: list[str]) -> None:
        listing = ", ".join(sorted(available)) or "none"
        super().__init__(f"The model '{model}' does not exist or is not served here. "
                         f"Available models: {listing}.")
        self.model = model
        self.available = available


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class BackendError(GatewayError):
    """A backend answered with an error, failed, or could not be reached."""

    status = 502
    type = "api_error"
    code = "backend_error"

    def __init__(self, message: str, *, status: int = 502, retryable: bool = False,
                 backend: str | None = None) -> None:
        super().__init__(message, status=status)
        self.retryable = retryable
        self.backend = backend


class NoBackend(GatewayError):
    """No backend is up, or all are busy past the queue's bound."""

    status = 503
    type = "api_error"
    code = "service_unavailable"


def ollama_error_message(raw: bytes | str, status: int) -> str:
    """The message of an Ollama error body (`{"error": ...}`), or the body's text itself."""
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
    except ValueError:
        pass
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return text.strip()[:500] or f"HTTP {status}"
