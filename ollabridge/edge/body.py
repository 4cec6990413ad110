"""Guard API request bodies: refuse those over OLLABRIDGE_MAX_BODY_BYTES with 413 before they
are read whole, and read API bodies as JSON whatever their Content-Type (as Ollama does, so
`curl -d '{...}'` works without a header)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollabridge.api.errors import error_payload
from ollabridge.asgi import as_json
from ollabridge.jsonwire import dumps


def _is_api(path: str) -> bool:
    return path.startswith(("/ollama/", "/v1/", "/device/"))


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException so the app's handlers render it."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(scope, send)
                return
        if scope["method"] == "POST" and _is_api(scope["path"]):
            scope = {**scope, "headers": as_json(scope["headers"])}
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(413, f"Request body is larger than the limit of {self.max_bytes} bytes.")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"Request body is larger than the limit of {self.max_bytes} bytes."
        raw = dumps(error_payload(scope.get("path", ""), 413, message, code="request_too_large"))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(raw)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": raw})
