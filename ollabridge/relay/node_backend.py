"""A connected GPU node as a Backend in the router: requests multiplexed over its relay socket.

One WebSocket per node carries many requests at once (up to the node's slots). Frames of one
request go into that request's own bounded buffer; the node may send at most `window` frames
of a request before the gateway grants more credit as the client consumes them, so a slow
client holds back its own stream and never the socket (see docs/relay-protocol.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.websockets import WebSocket, WebSocketState

from ollabridge.backends.base import Backend, BackendHealth
from ollabridge.errors import BackendError
from ollabridge.relay import protocol as p

if TYPE_CHECKING:
    from ollabridge.relay.hub import RelayHub

log = logging.getLogger("ollabridge.relay")


class _Request:
    """One request in flight on a node: its buffered frames and how it ended."""

    def __init__(self, rid: str, op: str, limit: int) -> None:
        self.id = rid
        self.op = op
        self.limit = limit
        self.items: deque[dict[str, Any]] = deque()
        self.wake = asyncio.Event()
        self.end: BackendError | None = None
        self.finished = False  # the consumer took its last chunk
        self.node_done = False  # the node sent its last `res` for it (done): it has let go
        self.unacked = 0
        self.chunks = 0

    def feed(self, frame: dict[str, Any]) -> bool:
        """Buffer a frame; False when the node overran its window (the buffer is full)."""
        if self.end is not None:
            return True
        if len(self.items) >= self.limit:
            return False
        self.items.append(frame)
        self.wake.set()
        return True

    def fail(self, exc: BackendError) -> None:
        if self.end is None:
            self.end = exc
            self.wake.set()

    async def get(self) -> dict[str, Any]:
        while not self.items:
            if self.end is not None:
                raise self.end
            self.wake.clear()
            await self.wake.wait()
        return self.items.popleft()


class NodeBackend(Backend):
    """A connected GPU node: serves chat/embed/show over its relay socket."""

    kind = "node"
    priority = 0
    probes = True

    def __init__(self, hub: "RelayHub", ws: WebSocket, node_id: str, hello: p.Hello) -> None:
        super().__init__(hello.name, slots=hello.slots)
        self.hub = hub
        self.ws = ws
        self.node_id = node_id
        self.hello = hello
        self._models = hello.models
        self._models_at = time.monotonic()
        self.connected = True
        self.connected_at = time.time()
        self.last_rx = time.monotonic()
        self.last_ping_at = 0.0
        self.rtt_ms: float | None = None
        self._out: asyncio.Queue[str] = asyncio.Queue()
        self._requests: dict[str, _Request] = {}
        # Stopped requests whose slot stays busy until the node lets go (see _hold), with their deadlines.
        self._held: dict[str, asyncio.TimerHandle] = {}
        self._seq = itertools.count(1)
        self._close: tuple[int, str] | None = None
        self._stop = asyncio.Event()
        self.closed = asyncio.Event()
        self._sign_of_life: asyncio.Event | None = None  # set by the next frame while a probe waits

    # -- Backend -----------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.connected and super().available

    @property
    def releasing(self) -> int:
        return len(self._held)

    async def fetch_models(self) -> list[dict[str, Any]]:
        return list(self._models)

    async def health(self) -> BackendHealth:
        return BackendHealth(self.connected, "connected" if self.connected else "disconnected",
                             self.hello.agent or None)

    async def close(self) -> None:
        self.close_soon(p.CLOSE_GOING_AWAY, "gateway shutting down")

    async def loaded(self) -> list[dict[str, Any]]:
        """What the node's Ollama has in memory (`ps` op; agents before it report nothing)."""
        if not self.connected or "ps" not in self.hello.ops:
            return []
        try:
            data = await asyncio.wait_for(self.call("ps", {}), 5)
        except (BackendError, TimeoutError):
            return []
        models = data.get("models")
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []

    async def ollama_version(self) -> str | None:
        return self.hello.ollama_version

    async def probe(self, timeout: float) -> bool:
        """A `ping`, and whether any frame comes back within `timeout` s (or 3 round trips, if longer)."""
        if not self.connected:
            return False
        if self._sign_of_life is None:
            self._sign_of_life = asyncio.Event()
            self.last_ping_at = time.monotonic()
            self.send({"type": "ping", "t": time.time()})
        bound = max(timeout, 3 * (self.rtt_ms or 0) / 1000)
        try:
            await asyncio.wait_for(self._sign_of_life.wait(), bound)
            return True
        except TimeoutError:
            return False
        finally:
            self._sign_of_life = None

    def lost(self, reason: str) -> None:
        """Close the socket (4408, as for missed heartbeats): every request on it fails retryably."""
        self.close_soon(p.CLOSE_HEARTBEAT, reason)

    def serves(self, op: str) -> bool:
        """Ops the node listed in its hello; `chat` (and `show`, which chat implied in early agents)
        always. An agent without `generate` in its ops is never sent one."""
        return op in ("chat", "show") or op in self.hello.ops

    async def stream(self, op: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        req = self._open(op, body)
        timeout = self.hub.first_token_timeout
        try:
            while True:
                frame = await self._next(req, timeout)
                timeout = self.hub.idle_timeout
                data = frame["data"]
                if "error" in data:
                    raise self._failed(req, BackendError(f"{self.name}: {data['error']}", backend=self.name))
                req.chunks += 1
                if frame["done"]:
                    req.finished = True
                    if not data.get("done"):
                        data = {**data, "done": True}
                    self.hub.tokens_relayed += int(data.get("eval_count") or req.chunks)
                    yield data
                    return
                yield data
        finally:
            self._finish(req)

    async def call(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        req = self._open(op, body)
        try:
            frame = await self._next(req, self.hub.first_token_timeout)
            req.finished = True
            data = frame["data"]
            if "error" in data:
                raise self._failed(req, BackendError(f"{self.name}: {data['error']}", backend=self.name))
            return data
        finally:
            self._finish(req)

    # -- requests ------------------------------------------------------------------------------
    def _open(self, op: str, body: dict[str, Any]) -> _Request:
        if not self.connected:
            raise BackendError(f"GPU node '{self.name}' is not connected", status=503, retryable=True,
                               backend=self.name)
        if not self.serves(op):
            raise BackendError(f"GPU node '{self.name}' does not serve '{op}'", status=501, retryable=True,
                               backend=self.name)
        rid = f"r{next(self._seq)}"
        # A node that honours its window never has more than `window` frames buffered (+1 error).
        req = _Request(rid, op, self.hub.window + 2)
        self._requests[rid] = req
        self.hub.requests_total += 1
        self.send({"type": "req", "id": rid, "op": op, "body": body})
        return req

    async def _next(self, req: _Request, timeout: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                frame = await req.get()
        except TimeoutError:
            raise self._failed(req, BackendError(f"GPU node '{self.name}' sent nothing for {timeout:g}s",
                                                 status=504, retryable=True, backend=self.name)) from None
        except BackendError as exc:
            raise self._failed(req, exc) from None
        if "error" in frame:
            err = frame["error"]
            raise self._failed(req, BackendError(f"{self.name}: {err['message']}", status=err["status"],
                                                 retryable=err["status"] >= 500, backend=self.name))
        req.unacked += 1
        if not frame["done"] and req.unacked >= max(1, self.hub.window // 2):
            self.send({"type": "credit", "id": req.id, "n": req.unacked})
            req.unacked = 0
        return frame

    def _failed(self, req: _Request, exc: BackendError) -> BackendError:
        self.hub.requests_failed += 1
        return exc

    def _finish(self, req: _Request) -> None:
        self._requests.pop(req.id, None)
        if not (req.finished or req.node_done) and self.connected:
            # The consumer went away (the client stopped or disconnected, a timeout, a bad answer) while
            # the node still works on it: stop the generation now, and keep the slot until it has.
            self.send({"type": "cancel", "id": req.id})
            self.hub.requests_cancelled += 1
            self._hold(req.id)

    def _hold(self, rid: str) -> None:
        """Count a cancelled request's slot as busy until the node lets go of it: its last `res` for
        that id (an agent confirms a cancel with one: done, error status 499), or, for agents that
        never confirm, `hub.release_timeout` seconds."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the loop (a stream finalized at exit): nothing to wait for
            return
        self._held[rid] = loop.call_later(self.hub.release_timeout, self._let_go, rid)

    def _let_go(self, rid: str) -> None:
        handle = self._held.pop(rid, None)
        if handle is not None:
            handle.cancel()
            self.hub.router.notify()  # a request may wait for this slot

    def send(self, frame: dict[str, Any]) -> None:
        if self.connected:
            self._out.put_nowait(p.encode(frame))

    def close_soon(self, code: int, reason: str) -> None:
        """Close the socket with `code` (safe from the event loop only; see RelayHub.kick)."""
        if self._close is None:
            self._close = (code, reason)
        self.connected = False
        self._stop.set()

    # -- the socket ------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Run the socket until it ends, then fail what is still in flight."""
        tasks = [asyncio.create_task(self._reader(), name=f"relay-read-{self.node_id}"),
                 asyncio.create_task(self._writer(), name=f"relay-write-{self.node_id}"),
                 asyncio.create_task(self._heartbeat(), name=f"relay-beat-{self.node_id}"),
                 asyncio.create_task(self._stop.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, p.ProtocolError):
                    log.warning("node %s (%s): %s; closing", self.node_id, self.name, exc)
                    self.close_soon(exc.code, str(exc))
                elif exc is not None and self._close is None:
                    log.info("node %s (%s): socket failed: %r", self.node_id, self.name, exc)
        finally:
            self.connected = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            why = self._close[1] if self._close else "disconnected"
            for req in list(self._requests.values()):
                req.fail(BackendError(f"GPU node '{self.name}' was lost ({why})", status=502,
                                      retryable=True, backend=self.name))
            for handle in self._held.values():
                handle.cancel()
            self._held.clear()
            if self._close is not None and self.ws.client_state == WebSocketState.CONNECTED:
                code, reason = self._close
                try:
                    await asyncio.wait_for(self.ws.close(code, p.close_reason(reason)), 2)
                except Exception:  # noqa: BLE001 - the peer may already be gone
                    pass
            self.closed.set()

    async def _reader(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self._close = self._close or (message.get("code", 1000), "node closed the socket")
                self.connected = False
                return
            self.last_rx = time.monotonic()
            if self._sign_of_life is not None:
                self._sign_of_life.set()
            raw = message.get("text") if message.get("text") is not None else message.get("bytes")
            frame = p.check_node_frame(p.parse(raw, self.hub.max_frame))
            kind = frame["type"]
            if kind == "res":
                self._deliver(frame)
            elif kind == "ping":
                self.send({"type": "pong", "t": frame.get("t")})
            elif kind == "pong":
                if self.last_ping_at:
                    self.rtt_ms = round((time.monotonic() - self.last_ping_at) * 1000, 1)
            elif kind == "models":
                self._models = frame["models"]
                self._models_at = time.monotonic()
                self.hub.models_changed(self)

    def _deliver(self, frame: dict[str, Any]) -> None:
        """A `res` to the request it answers, its data checked first (relay/protocol.py): a value the
        gateway cannot use fails that request (502, or an error event once streaming), is logged, and
        the node is told to stop; the socket and the node's other requests go on. A last `res` for a
        request the gateway stopped frees its slot."""
        req = self._requests.get(frame["id"])
        if req is None:
            if frame["done"]:
                self._let_go(frame["id"])  # the node's last word on a request it was told to stop
            return
        if frame["done"]:
            req.node_done = True
        if req.end is not None:
            return
        if "data" in frame:
            try:
                frame = {**frame, "data": p.check_answer(req.op, frame["data"], frame["done"])}
            except p.BadAnswer as exc:
                log.warning("node %s (%s) sent a bad answer to %s (%s): %s; failing that request",
                            self.node_id, self.name, req.id, req.op, exc)
                req.fail(BackendError(f"GPU node '{self.name}' sent a bad answer: {exc}", status=502,
                                      retryable=True, backend=self.name))
                return  # its consumer stops on the error, and _finish tells the node
        if not req.feed(frame):
            req.fail(BackendError(f"GPU node '{self.name}' overran its flow-control window",
                                  backend=self.name))

    async def _writer(self) -> None:
        while True:
            text = await self._out.get()
            await self.ws.send_text(text)

    async def _heartbeat(self) -> None:
        beat = self.hub.heartbeat_s
        next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            if now - self.last_rx > 3 * beat:
                log.warning("node %s (%s): silent for %.1fs (3 heartbeats); dropping it",
                            self.node_id, self.name, now - self.last_rx)
                self.close_soon(p.CLOSE_HEARTBEAT, "no frame for 3 heartbeats")
                return
            if now >= next_ping:
                self.last_ping_at = now
                self.send({"type": "ping", "t": time.time()})
                next_ping = now + beat
            await asyncio.sleep(min(next_ping, self.last_rx + 3 * beat + 0.01) - time.monotonic())

    # -- what status pages show ------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "name": self.name, "connected": self.connected,
                "connected_since": self.connected_at, "agent": self.hello.agent,
                "models": [m.get("name") for m in self._models], "gpu": self.hello.gpu,
                "vram_mb": self.hello.vram_mb, "slots": self.slots, "in_flight": len(self._requests) + self.releasing,
                "requests": self.stats.total, "failed": self.stats.failed, "tokens": self.stats.tokens,
                "tokens_per_s": self.stats.last_tokens_per_s, "speed": self.speeds(), "rtt_ms": self.rtt_ms}
