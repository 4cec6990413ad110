"""The web UI's own API calls: in-process HTTP requests through the whole app, edge included.

A chat on the page is a `POST /ollama/api/chat` handed to the gateway's ASGI app in this process,
with the visitor's API key and the visitor's address (the Gradio request's peer and its
`X-Forwarded-For`), exactly as if the browser had sent it to the API. So the body limit, API keys,
rate limits, the request timeout, the shutdown drain, metrics and the log line apply to it
unchanged, from the one place that has them (ollabridge/edge/). Nothing here decides who may chat.

The receiving end behaves like uvicorn's (ASGI 2.3): once the UI lets go of an answer (the reply
finished, or the visitor pressed Stop), `receive` reports `http.disconnect` and `send` drops
whatever comes, so the route cancels its stream and the backend's generation stops.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ollabridge.edge.context import SERVED_EXTENSION
from ollabridge.jsonwire import dumps, loads

log = logging.getLogger("ollabridge.ui")

QUEUE = 32  # response messages buffered before the app's `send` waits (a socket's backpressure)
LET_GO_S = 5.0  # how long an abandoned request may take to wind down before it is cancelled


@dataclass(frozen=True)
class Visitor:
    """Who is calling: their peer address and forwarded-for headers, and the API key they gave."""

    host: str = ""
    port: int = 0
    forwarded: tuple[str, ...] = ()
    key: str = ""

    @classmethod
    def of(cls, request: Any, key: str | None) -> "Visitor":
        """The visitor of a Gradio request (its queue/join call carries the browser's address)."""
        client = getattr(request, "client", None) if request is not None else None
        headers = getattr(request, "headers", None) if request is not None else None
        forwarded: list[str] = []
        if headers is not None:
            getlist = getattr(headers, "getlist", None)
            forwarded = list(getlist("x-forwarded-for")) if getlist else [
                v for k, v in dict(headers).items() if k.lower() == "x-forwarded-for"]
        return cls(host=str(getattr(client, "host", "") or ""), port=int(getattr(client, "port", 0) or 0),
                   forwarded=tuple(forwarded), key=(key or "").strip())

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [(b"content-type", b"application/json"), (b"user-agent", b"ollabridge-ui")]
        if self.key:
            out.append((b"authorization", b"Bearer " + self.key.encode("latin-1", "replace")))
        out += [(b"x-forwarded-for", value.encode("latin-1", "replace")) for value in self.forwarded]
        return out


@dataclass
class Answer:
    """One in-process request's answer: status, headers, the body as it streams, and `served`
    (which backend answered and its last chunk, as the router told the edge)."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    served: dict[str, Any] = field(default_factory=dict)
    _queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE))
    _gone: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None
    _ended: bool = False

    async def body(self) -> AsyncIterator[bytes]:
        while not self._ended:
            message = await self._queue.get()
            if message is None:
                self._ended = True
                return
            if message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    self._ended = True

    async def lines(self) -> AsyncIterator[bytes]:
        """The body split into lines (NDJSON), blank ones skipped."""
        pending = b""
        async for piece in self.body():
            pending += piece
            *done, pending = pending.split(b"\n")
            for line in done:
                if line.strip():
                    yield line
        if pending.strip():
            yield pending

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.body()])

    async def close(self) -> None:
        """Let go: the app sees a disconnect; wait for it to wind down (its log line written, its
        limits released), cancelling it if it does not."""
        self._gone.set()
        while not self._queue.empty():  # unblock a `send` waiting on a full queue
            self._queue.get_nowait()
        task = self._task
        if task is None:
            return
        if not task.done():
            await asyncio.wait({task}, timeout=LET_GO_S)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=LET_GO_S)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("in-process request failed", exc_info=task.exception())


async def post(app: Any, path: str, payload: dict[str, Any], visitor: Visitor) -> Answer:
    """Send `payload` as JSON to `path` on `app`; return once the answer's status is known.
    Always `close()` the answer (a `finally` or the caller's own cleanup)."""
    body = dumps(payload)
    answer = Answer()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [*visitor.headers(), (b"content-length", str(len(body)).encode())],
             "client": (visitor.host, visitor.port), "server": ("ollabridge-ui", 0), "state": {},
             "extensions": {SERVED_EXTENSION: answer.served}}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answer._gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if not answer._gone.is_set():
            await answer._queue.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            if not answer._gone.is_set():
                await answer._queue.put(None)

    answer._task = asyncio.create_task(run())
    try:
        while True:
            message = await answer._queue.get()
            if message is None:
                answer._ended = True
                answer.status = 500
                return answer
            if message["type"] == "http.response.start":
                answer.status = int(message["status"])
                answer.headers = list(message.get("headers") or [])
                return answer
    except BaseException:
        await answer.close()
        raise


def error_text(raw: bytes) -> str:
    """The message of an error body in Ollama's format (`{"error": "..."}`), else its text."""
    try:
        data = loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        return str(error.get("message") if isinstance(error, dict) else error)
    return raw.decode(errors="replace").strip()[:500]
