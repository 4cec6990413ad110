"""Serving a request on a leased backend, and counting the tokens it made.

Streams (chat, generate) and one-shot calls (embed, embeddings, show) go through one retry loop: a
backend that fails retryably before anything reached the caller is left for another that serves the
model, at most `retries` times; once a chunk was sent the failure reaches the caller, never a
silent restart elsewhere. Backends that cannot do the op (relay nodes on an older agent) are never
sent it. With `relax_think`, a `think` the model cannot honour ("does not support thinking") is
dropped and the request sent again: API families whose clients always ask for thinking (Claude
Code) still get an answer from models that do not think. A stream's last chunk adds its tokens and
speed to the backend's stats.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Callable, TypeVar

from ollabridge.backends.base import Backend
from ollabridge.errors import BackendError, NoBackend
from ollabridge.routing.pool import Pool
from ollabridge.routing.slots import Slots

T = TypeVar("T")


class Serving:
    def __init__(self, pool: Pool, slots: Slots, *, retries: int = 2) -> None:
        self.pool = pool
        self.slots = slots
        self.retries = retries
        # (backend, model) pairs that answered "does not support thinking": later requests drop the
        # hint before they are sent, not after a refused first try (bounded: cleared past 4096).
        self.thinkless: set[tuple[str, str]] = set()

    def stream(self, op: str, body: dict[str, Any], served: dict[str, Any] | None = None,
               relax_think: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Stream the `op` objects ("chat": `/api/chat`, "generate": `/api/generate`) for `body`,
        retrying elsewhere before the first chunk.

        `served`, when given, is filled with the name and kind of the backend that answered, and
        with its final chunk under "done".
        """
        return self._serve(op, body, served, relax_think,
                           lambda backend, sent: Metered(backend, backend.stream(op, sent), served))

    async def call(self, op: str, body: dict[str, Any], served: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        """A one-shot native call (embed, embeddings, show) on a backend with the model."""
        async def once(backend: Backend, sent: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
            yield await backend.call(op, sent)

        # Drained, not abandoned after the first item: the slot is free again when this returns.
        [result] = [item async for item in self._serve(op, body, served, False, once)]
        return result

    async def _serve(self, op: str, body: dict[str, Any], served: dict[str, Any] | None, relax_think: bool,
                     run: Callable[[Backend, dict[str, Any]], AsyncIterator[T]]) -> AsyncIterator[T]:
        """The items `run(backend, body)` makes on a leased backend; on a retryable BackendError
        before the first item, the same again on a backend not tried yet."""
        model = body.get("model", "")
        tried: set[int] = {id(b) for b in self.pool.backends if not b.serves(op)}
        if tried:
            await self._some_can(op, model, tried)
        attempts = 0
        while True:
            sent = False
            try:
                async with self.slots.lease(model, tried) as backend:
                    attempts += 1
                    tried.add(id(backend))
                    if served is not None:
                        served.update(backend=backend.name, kind=backend.kind)
                    thinkless = relax_think and "think" in body and (backend.name, model) in self.thinkless
                    items = run(backend, _without_think(body) if thinkless else body)
                    try:
                        async for item in items:
                            sent = True
                            yield item
                    finally:
                        # Closed now, not by the garbage collector: a backend abandoned mid-stream stops at
                        # once (a node gets its cancel) while its slot is still leased.
                        await items.aclose()
                    return
            except BackendError as exc:
                if not sent and relax_think and "think" in body and _cannot_think(exc):
                    if len(self.thinkless) > 4096:
                        self.thinkless.clear()
                    self.thinkless.add((backend.name, model))
                    tried.discard(id(backend))  # the same backend, without the hint
                    continue
                if sent or not exc.retryable or attempts > self.retries or not self.pool.serving(model, tried):
                    raise

    async def _some_can(self, op: str, model: str, cannot: set[int]) -> None:
        """NoBackend when every backend with `model` is one that cannot do `op`."""
        if all(id(b) in cannot for b in await self.pool.candidates(model)):
            raise NoBackend(f"No backend serving '{model}' can answer '{op}': its GPU nodes run an older "
                            "agent; update ollabridge on them.", headers={"Retry-After": "30"})


def _without_think(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "think"}


def _cannot_think(exc: BackendError) -> bool:
    return exc.status == 400 and "does not support thinking" in exc.message


class Metered:
    """A backend's chat stream, passed through; its last chunk counts into the backend's stats and
    goes to `served["done"]` (token counts for the metrics and the log line).

    A plain iterator, not a generator: it adds no generator of its own to finalize when the caller
    abandons the stream, so the backend's stream is closed as promptly as if iterated directly."""

    def __init__(self, backend: Backend, chunks: AsyncIterator[dict[str, Any]],
                 served: dict[str, Any] | None) -> None:
        self.backend, self.chunks, self.served = backend, aiter(chunks), served
        self.started = time.monotonic()

    def __aiter__(self) -> Metered:
        return self

    async def aclose(self) -> None:
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()

    async def __anext__(self) -> dict[str, Any]:
        chunk = await anext(self.chunks)
        if chunk.get("done"):
            _count_tokens(self.backend, chunk, self.started)
            if self.served is not None:
                self.served["done"] = chunk
        return chunk


def _count_tokens(backend: Backend, chunk: dict[str, Any], started: float) -> None:
    tokens = int(chunk.get("eval_count") or 0)
    backend.stats.tokens += tokens
    duration = chunk.get("eval_duration") or 0
    if tokens and duration:
        backend.stats.last_tokens_per_s = tokens / (duration / 1e9)
    elif tokens:
        backend.stats.last_tokens_per_s = tokens / max(time.monotonic() - started, 1e-6)
