"""Serving a request on a leased backend, and counting the tokens it made.

Streaming chat and one-shot calls (embed, embeddings, show) go through one retry loop: a backend
that fails retryably before anything reached the caller is left for another that serves the
model, at most `retries` times; once a chunk was sent the failure reaches the caller, never a
silent restart elsewhere. A chat's last chunk adds its tokens and speed to the backend's stats.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Callable, TypeVar

from ollabridge.backends.base import Backend
from ollabridge.errors import BackendError
from ollabridge.routing.pool import Pool
from ollabridge.routing.slots import Slots

T = TypeVar("T")


class Serving:
    def __init__(self, pool: Pool, slots: Slots, *, retries: int = 2) -> None:
        self.pool = pool
        self.slots = slots
        self.retries = retries

    def chat(self, body: dict[str, Any], served: dict[str, Any] | None = None
             ) -> AsyncIterator[dict[str, Any]]:
        """Stream `/api/chat` objects for `body`, retrying elsewhere before the first chunk.

        `served`, when given, is filled with the name and kind of the backend that answered, and
        with its final chunk under "done".
        """
        return self._serve(body, served, lambda backend: Metered(backend, backend.chat(body), served))

    async def call(self, op: str, body: dict[str, Any], served: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        """A one-shot native call (embed, embeddings, show) on a backend with the model."""
        async def once(backend: Backend) -> AsyncIterator[dict[str, Any]]:
            yield await backend.call(op, body)

        # Drained, not abandoned after the first item: the slot is free again when this returns.
        [result] = [item async for item in self._serve(body, served, once)]
        return result

    async def _serve(self, body: dict[str, Any], served: dict[str, Any] | None,
                     run: Callable[[Backend], AsyncIterator[T]]) -> AsyncIterator[T]:
        """The items `run(backend)` makes on a leased backend; on a retryable BackendError before
        the first item, the same again on a backend not tried yet."""
        tried: set[int] = set()
        model = body.get("model", "")
        while True:
            sent = False
            try:
                async with self.slots.lease(model, tried) as backend:
                    tried.add(id(backend))
                    if served is not None:
                        served.update(backend=backend.name, kind=backend.kind)
                    items = run(backend)
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
                if sent or not exc.retryable or len(tried) > self.retries or not self.pool.serving(model, tried):
                    raise


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
