"""Choose which backend serves a request, and keep count of what each one is doing.

A request goes to a backend that lists its model; among those, lower `priority` first (GPU
nodes before the Space's CPU), then the fewest requests in flight, never past a backend's
slots. When all of them are full the request waits in a bounded queue. A backend that fails
before the first chunk reached the caller is retried on another one (at most `retries`).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from ollabridge.backends.base import Backend
from ollabridge.errors import BackendError, ModelNotFound, NoBackend


class Router:
    def __init__(self, *, models_ttl: float = 5.0, default_model: str = "", retries: int = 2,
                 max_queue: int = 64, queue_timeout: float = 60.0) -> None:
        self.backends: list[Backend] = []
        self.models_ttl = models_ttl
        self.default_model = default_model
        self.retries = retries
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.waiting = 0
        self._freed = asyncio.Condition()

    # -- membership --------------------------------------------------------------------
    def add(self, backend: Backend) -> None:
        self.backends.append(backend)
        self.notify()

    def remove(self, backend: Backend) -> None:
        if backend in self.backends:
            self.backends.remove(backend)

    def notify(self) -> None:
        """Wake queued requests: a slot freed, a backend joined or its models changed."""
        if self.waiting:
            asyncio.get_running_loop().create_task(self._notify_all())

    async def _notify_all(self) -> None:
        async with self._freed:
            self._freed.notify_all()

    # -- models ------------------------------------------------------------------------
    async def refresh(self, force: bool = False) -> None:
        ttl = 0.0 if force else self.models_ttl
        # On the hot path every list is fresh: skip gather's tasks (it costs more than the check).
        now = time.monotonic()
        stale = [b for b in self.backends if now - b._models_at >= ttl]
        if len(stale) == 1:
            await stale[0].models(ttl)
        elif stale:
            await asyncio.gather(*(b.models(ttl) for b in stale))

    async def models(self) -> list[dict[str, Any]]:
        """The union of every backend's models (first backend's entry wins a name)."""
        await self.refresh()
        seen: dict[str, dict[str, Any]] = {}
        for backend in sorted(self.backends, key=lambda b: b.priority):
            for entry in backend.cached_models():
                name = entry.get("name") or entry.get("model")
                if name and name not in seen:
                    seen[name] = {**entry, "ollabridge": {"backend": backend.name, "kind": backend.kind}}
        return list(seen.values())

    async def resolve_model(self, requested: str | None) -> str:
        """The model to use: as asked; when omitted, the default, else the first served."""
        if requested:
            return requested
        names = [m.get("name") or m.get("model") for m in await self.models()]
        if self.default_model in names or not names:
            return self.default_model
        return names[0]

    async def candidates(self, model: str) -> list[Backend]:
        await self.refresh()
        found = [b for b in self.backends if b.has_model(model)]
        if not found:  # a model pulled a moment ago: look once more, fresh
            await self.refresh(force=True)
            found = [b for b in self.backends if b.has_model(model)]
        if not found:
            if not any(b.reachable for b in self.backends):
                raise NoBackend("No backend is up: " + "; ".join(
                    f"{b.name} does not answer" for b in self.backends) + ".", headers={"Retry-After": "5"})
            names = sorted({m.get("name") or m.get("model") for m in await self.models()} - {None})
            raise ModelNotFound(model, names)
        return found

    # -- leasing a backend ---------------------------------------------------------------
    def _best(self, backends: list[Backend], exclude: set[int]) -> Backend | None:
        free = [b for b in backends if b.available and id(b) not in exclude and b in self.backends]
        if not free:
            return None
        return min(free, key=lambda b: (b.priority, b.stats.in_flight))

    @asynccontextmanager
    async def lease(self, model: str, exclude: set[int] | None = None) -> AsyncIterator[Backend]:
        """Hold a slot on the best backend for `model`, waiting in the queue when all are full."""
        exclude = exclude or set()
        backends = await self.candidates(model)
        backend = self._best(backends, exclude)
        if backend is None:
            backend = await self._wait_for_slot(model, exclude)
        backend.stats.in_flight += 1
        backend.stats.total += 1
        try:
            yield backend
        except BackendError:
            backend.stats.failed += 1
            raise
        finally:
            backend.stats.in_flight -= 1
            self.notify()

    async def _wait_for_slot(self, model: str, exclude: set[int]) -> Backend:
        if self.waiting >= self.max_queue:
            raise NoBackend(f"All backends serving '{model}' are busy and the queue is full.",
                            headers={"Retry-After": "5"})
        self.waiting += 1
        deadline = time.monotonic() + self.queue_timeout
        try:
            async with self._freed:
                while True:
                    live = [b for b in self.backends if b.has_model(model) and id(b) not in exclude]
                    if not live:
                        raise NoBackend(f"No backend serving '{model}' is up.", headers={"Retry-After": "5"})
                    backend = self._best(live, exclude)
                    if backend is not None:
                        return backend
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise NoBackend(f"All backends serving '{model}' stayed busy for "
                                        f"{self.queue_timeout:g}s.", headers={"Retry-After": "5"})
                    try:
                        await asyncio.wait_for(self._freed.wait(), remaining)
                    except TimeoutError:
                        pass
        finally:
            self.waiting -= 1

    # -- serving -----------------------------------------------------------------------
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
                if not [b for b in self.backends if b.has_model(model) and id(b) not in tried]:
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
                others = [b for b in self.backends if b.has_model(model) and id(b) not in tried]
                if not exc.retryable or len(tried) > self.retries or not others:
                    raise

    async def loaded(self) -> list[dict[str, Any]]:
        results = await asyncio.gather(*(b.loaded() for b in self.backends))
        return [m for models in results for m in models]

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.backends), return_exceptions=True)


def _count_tokens(backend: Backend, chunk: dict[str, Any], started: float) -> None:
    tokens = int(chunk.get("eval_count") or 0)
    backend.stats.tokens += tokens
    duration = chunk.get("eval_duration") or 0
    if tokens and duration:
        backend.stats.last_tokens_per_s = tokens / (duration / 1e9)
    elif tokens:
        backend.stats.last_tokens_per_s = tokens / max(time.monotonic() - started, 1e-6)
