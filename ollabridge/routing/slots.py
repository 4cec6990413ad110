"""Leasing a slot on a backend, and the queue for when every slot is taken.

Among the pool's members that serve a model, the best free one is the lowest `priority` (GPU
nodes before the Space's CPU), then the fewest requests in flight, never past a backend's slots.
When none is free the request waits in a bounded queue (`max_queue` deep, `queue_timeout` long),
woken by `notify` whenever a slot frees, a backend joins or its models change.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from ollabridge.backends.base import Backend
from ollabridge.errors import BackendError, NoBackend
from ollabridge.routing.pool import Pool


class Slots:
    def __init__(self, pool: Pool, *, max_queue: int = 64, queue_timeout: float = 60.0) -> None:
        self.pool = pool
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.waiting = 0
        self._freed = asyncio.Condition()

    def notify(self) -> None:
        """Wake queued requests: a slot freed, a backend joined or its models changed."""
        if self.waiting:
            asyncio.get_running_loop().create_task(self._notify_all())

    async def _notify_all(self) -> None:
        async with self._freed:
            self._freed.notify_all()

    def _best(self, backends: list[Backend], exclude: set[int]) -> Backend | None:
        members = [b for b in backends if id(b) not in exclude and b in self.pool.backends]
        free = [b for b in members if b.available]
        best = min(free, key=lambda b: (b.priority, b.stats.in_flight)) if free else None
        # A better backend whose slot is only held until it lets go of a stopped request is free in a
        # moment: wait for it (woken by notify) rather than fall back to a slower one.
        soon = [b.priority for b in members
                if b.releasing and b not in free and b.stats.in_flight < (b.slots or 0)]
        if soon and (best is None or min(soon) < best.priority):
            return None
        return best

    @asynccontextmanager
    async def lease(self, model: str, exclude: set[int] | None = None) -> AsyncIterator[Backend]:
        """Hold a slot on the best backend for `model`, waiting in the queue when all are full."""
        exclude = exclude or set()
        backends = await self.pool.candidates(model)
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
                    live = self.pool.serving(model, exclude)
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
