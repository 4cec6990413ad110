"""Serving the gateway's `req` frames from the local Ollama, on one connection.

`Requests` starts each request in its own task (refusing past the node's slots with a 503),
streams chat over `ollabridge.backends.http1` and answers the one-shot ops (embed, embeddings,
show) in one `res`, spends the gateway's flow-control credit (`_Credit`) per `res` frame, keeps
every frame under the relay's size limit, and stops a request on `cancel`. A request holds its slot
until its last `res` is queued, sent only once the node has let go of it (its Ollama request closed); a
cancelled one confirms with a last `res` (done, error status 499, as Ollama answers a cancelled
request), so the gateway knows the slot is free. Frames go out through the connection's queue as
encoded text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ollabridge.backends import http1
from ollabridge.errors import ollama_error_message
from ollabridge.node.ollama import LocalOllama
from ollabridge.relay import protocol as p

log = logging.getLogger("ollabridge.node")

OLLAMA_PATHS = {"embed": ("POST", "/api/embed"), "embeddings": ("POST", "/api/embeddings"),
                "show": ("POST", "/api/show"), "ps": ("GET", "/api/ps")}
_FOREVER = 86400.0  # the local Ollama may think as long as it likes; the gateway has the timeouts


class _Ended(Exception):
    """The request's last `res` (an error) is sent: stop serving it."""


class _Credit:
    """How many more `res` frames of one request the gateway will take (None: no limit)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.more = asyncio.Event()

    async def take(self) -> None:
        if self.n is None:
            return
        while self.n <= 0:
            self.more.clear()
            await self.more.wait()
        self.n -= 1

    def give(self, k: int) -> None:
        if self.n is not None:
            self.n += k
            self.more.set()


class Requests:
    """The requests one connection is serving: `start` a `req`, `cancel` one, give it `credit`."""

    def __init__(self, ollama: LocalOllama, slots: int, out: asyncio.Queue[str],
                 window: int | None = None, max_frame: int = p.DEFAULT_MAX_FRAME) -> None:
        self.ollama = ollama
        self.slots = slots
        self.out = out
        self.window = window
        self.max_frame = max_frame
        self.active: dict[str, tuple[asyncio.Task, _Credit]] = {}
        self._stopped: set[str] = set()  # cancelled by the gateway, not confirmed yet

    def __len__(self) -> int:
        return len(self.active)

    def start(self, frame: dict[str, Any]) -> None:
        rid = frame["id"]
        if rid in self.active:
            return
        if len(self.active) >= self.slots:
            self._send({"type": "res", "id": rid, "done": True,
                        "error": {"status": 503, "message": f"node busy: all {self.slots} slots in use"}})
            return
        credit = _Credit(self.window)
        task = asyncio.create_task(self._serve(rid, frame["op"], frame["body"], credit))
        self.active[rid] = (task, credit)
        task.add_done_callback(lambda _task, rid=rid: self._ended(rid))

    def cancel(self, rid: str) -> None:
        active = self.active.get(rid)
        if active:
            self._stopped.add(rid)
            active[0].cancel()

    def credit(self, rid: str, n: int) -> None:
        active = self.active.get(rid)
        if active:
            active[1].give(n)

    async def cancel_all(self) -> None:
        tasks = [task for task, _ in self.active.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.active.clear()

    async def _serve(self, rid: str, op: str, body: dict[str, Any], credit: _Credit) -> None:
        try:
            if op in p.STREAMING_OPS:
                await self._stream(rid, op, body, credit)
            else:
                method, path = OLLAMA_PATHS[op]
                response = await self.ollama.http.request(method, path, json=body if method == "POST" else None)
                if response.status_code >= 400:
                    self._error(rid, response.status_code, ollama_error_message(response.content, response.status_code))
                else:
                    await credit.take()
                    self._res(rid, response.json(), True)
        except asyncio.CancelledError:
            log.info("request %s cancelled by the gateway", rid)
        except _Ended:
            pass
        except http1.READ_ERRORS as exc:
            self._error(rid, 502, f"the node's Ollama at {self.ollama.url} failed: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - one request never takes the agent down
            log.exception("request %s failed", rid)
            self._error(rid, 500, f"node error: {type(exc).__name__}: {exc}")

    def _ended(self, rid: str) -> None:
        """A request's task is over (its Ollama request closed). One that sent no last `res` (it was
        cancelled, perhaps before it began) frees its slot now, and confirms a cancel of the gateway's."""
        stopped = rid in self._stopped
        self._stopped.discard(rid)
        if rid in self.active:
            if stopped:
                self._error(rid, 499, "cancelled")
            else:
                self.active.pop(rid, None)

    async def _stream(self, rid: str, op: str, body: dict[str, Any], credit: _Credit) -> None:
        """`/api/chat` or `/api/generate` from the local Ollama, one `res` frame per line."""
        reply = await http1.post_stream(self.ollama.pool, self.ollama.http, f"/api/{op}", json.dumps(body).encode(),
                                        _FOREVER)
        try:
            if reply.status >= 400:
                raw = await reply.read_all(30.0)
                self._error(rid, reply.status, ollama_error_message(raw, reply.status))
                return
            async for line in http1.Lines(reply, _FOREVER, _FOREVER):
                data = json.loads(line)
                done = bool(data.get("done")) or "error" in data
                if done:
                    await http1.drain(reply)  # let go of Ollama's answer before the last `res` frees the slot
                await credit.take()
                self._res(rid, data, done)
                if done:
                    return
        finally:
            await http1.close(reply)
        self._error(rid, 502, "the node's Ollama ended the stream before it was done")

    def _res(self, rid: str, data: dict[str, Any], done: bool) -> None:
        text = p.encode({"type": "res", "id": rid, "data": data, "done": done})
        if len(text.encode()) > self.max_frame:
            self._error(rid, 413, f"response larger than the relay's frame limit ({self.max_frame} bytes)")
            raise _Ended
        if done:
            self.active.pop(rid, None)  # the last `res`: the slot is free for the request it lets in
        self.out.put_nowait(text)

    def _error(self, rid: str, status: int, message: str) -> None:
        self.active.pop(rid, None)
        self._send({"type": "res", "id": rid, "done": True, "error": {"status": status, "message": message}})

    def _send(self, frame: dict[str, Any]) -> None:
        self.out.put_nowait(p.encode(frame))
