"""The router: the one object the gateway talks to, composed of the routing package's parts.

A request goes to a backend that lists its model (`pool`); among those the best free one, or a
wait in the bounded queue when all are full (`slots`); a backend that fails before the first chunk
reached the caller is retried on another one (here, for now). `Router` wires them together and
keeps the API the gateway, the relay hub, the UI and the metrics use.
"""

from __future__ import annotations

import time
from typing import Any, AsyncContextManager, AsyncIterator

from ollabridge.backends.base import Backend
from ollabridge.errors import BackendError
from ollabridge.routing.pool import Pool
from ollabridge.routing.slots import Slots


class Router:
    def __init__(self, *, models_ttl: float = 5.0, default_model: str = "", retries: int = 2,
                 max_queue: int = 64, queue_timeout: float = 60.0) -> None:
        self.pool = Pool(models_ttl=models_ttl, default_model=default_model)
        self.slots = Slots(self.pool, max_queue=max_queue, queue_timeout=queue_timeout)
        self.retries = retries

    # -- membership --------------------------------------------------------------------
    @property
    def backends(self) -> list[Backend]:
        return self.pool.backends

    def add(self, backend: Backend) -> None:
        self.pool.add(backend)
        self.slots.notify()

    def remove(self, backend: Backend) -> None:
        self.pool.remove(backend)

    def notify(self) -> None:
        """Wake queued requests: a slot freed, a backend joined or its models changed."""
        self.slots.notify()

    @property
    def waiting(self) -> int:
        """Requests in the queue now, waiting for a slot."""
        return self.slots.waiting

    # -- models ------------------------------------------------------------------------
    async def refresh(self, force: bool = False) -> None:
        await self.pool.refresh(force)

    async def models(self) -> list[dict[str, Any]]:
        """The union of every backend's models (first backend's entry wins a name)."""
        return await self.pool.models()

    async def resolve_model(self, requested: str | None) -> str:
        """The model to use: as asked; when omitted, the default, else the first served."""
        return await self.pool.resolve_model(requested)

    async def candidates(self, model: str) -> list[Backend]:
        return await self.pool.candidates(model)

    # -- leasing and serving ---------------------------------------------------------------
    def lease(self, model: str, exclude: set[int] | None = None) -> AsyncContextManager[Backend]:
        """Hold a slot on the best backend for `model`, waiting in the queue when all are full."""
        return self.slots.lease(model, exclude)

    async def chat(self, body: dict[str, Any], served: dict[str, Any] | None = None
                   ) -> AsyncIterator[dict[str, Any]]:
        """Stream `/api/chat` objects for `body`, retrying elsewhere before the first chunk.

        `served`, when given, is filled with the name and kind of the backend that answered.
        """
        tried: set[int] = set()
        model = body.get("model", "")
        while True:
            sent = False
            try:
                async with self.lease(model, tried) as backend:
                    tried.add(id(backend))
                    if served is not None:
                        served.update(backend=backend.name, kind=backend.kind)
                    started = time.monotonic()
                    async for chunk in backend.chat(body):
                        sent = True
                        if chunk.get("done"):
                            _count_tokens(backend, chunk, started)
                            if served is not None:
                                served["done"] = chunk  # token counts for the metrics and the log line
                        yield chunk
                    return
            except BackendError as exc:
                if sent or not exc.retryable or len(tried) > self.retries:
                    raise
                if not self.pool.serving(model, tried):
                    raise

    async def call(self, op: str, body: dict[str, Any], served: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        """A one-shot native call (embed, embeddings, show) on a backend with the model."""
        tried: set[int] = set()
        model = body.get("model", "")
        while True:
            try:
                async with self.lease(model, tried) as backend:
                    tried.add(id(backend))
                    if served is not None:
                        served.update(backend=backend.name, kind=backend.kind)
                    return await backend.call(op, body)
            except BackendError as exc:
                others = self.pool.serving(model, tried)
                if not exc.retryable or len(tried) > self.retries or not others:
                    raise

    async def loaded(self) -> list[dict[str, Any]]:
        return await self.pool.loaded()

    async def close(self) -> None:
        await self.pool.close()


def _count_tokens(backend: Backend, chunk: dict[str, Any], started: float) -> None:
    tokens = int(chunk.get("eval_count") or 0)
    backend.stats.tokens += tokens
    duration = chunk.get("eval_duration") or 0
    if tokens and duration:
        backend.stats.last_tokens_per_s = tokens / (duration / 1e9)
    elif tokens:
        backend.stats.last_tokens_per_s = tokens / max(time.monotonic() - started, 1e-6)
