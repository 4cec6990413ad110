"""Small ASGI helpers that the gateway and the in-box engine share."""

from __future__ import annotations

from typing import Any

JSON = b"application/json"


def as_json(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Request headers that say the body is JSON, whatever Content-Type the client sent (Ollama reads
    every body as JSON, so `curl -d '{...}'` works without a header)."""
    if any(k == b"content-type" and v.startswith(JSON) for k, v in headers):
        return headers
    return [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", JSON)]


async def until_disconnect(receive: Any) -> None:
    """Return once the client has gone away (the server reports `http.disconnect`)."""
    while (await receive())["type"] != "http.disconnect":
        pass
