"""The router: the one object the gateway talks to, composed of the routing package's parts.

A request goes to a backend that lists its model (`pool`); among those the one that served its
conversation's prefix recently while it is free and not much slower (`affinity`), else the best free one, or a
wait in the bounded queue when all are full (`slots`); a backend that fails before the first chunk
reached the caller is retried on another one, and one lost after it is resumed on another one
(`serve`, with `resume` and `stall`). `Router` only wires them together and
keeps the API the gateway, the relay hub, the UI and the metrics use.
"""

from __future__ import annotations

from typing import Any, AsyncContextManager, AsyncIterator

from ollabridge.backends.base import Backend
from ollabridge.routing.affinity import Affinity
from ollabridge.routing.pool import Pool
from ollabridge.routing.serve import Serving
from ollabridge.routing.slots import Slots
from ollabridge.routing.stall import StallPolicy


class Router:
    def __init__(self, *, models_ttl: float = 5.0, default_model: str = "", retries: int = 2,
                 max_queue: int = 64, queue_timeout: float = 60.0,
                 aliases: list[tuple[str, str]] | None = None, resume: bool = True, max_resumes: int = 2,
                 stall: StallPolicy | None = None, expected_tokens: int = 256, affinity: bool = True) -> None:
        self.pool = Pool(models_ttl=models_ttl, default_model=default_model, aliases=aliases or ())
        self.affinity = Affinity() if affinity else None
        self.slots = Slots(self.pool, max_queue=max_queue, queue_timeout=queue_timeout,
                           expected_tokens=expected_tokens, affinity=self.affinity)
        self.serving = Serving(self.pool, self.slots, retries=retries, resume=resume, max_resumes=max_resumes,
                               stall=stall)

    # -- membership --------------------------------------------------------------------
    @property
    def backends(self) -> list[Backend]:
        return self.pool.backends

    def add(self, backend: Backend) -> None:
        self.pool.add(backend)
        self.slots.notify()

    def remove(self, backend: Backend) -> None:
        self.pool.remove(backend)

    def starting(self, backend: Backend, timeout: float) -> None:
        """`backend` is starting (the in-box engine): requests for a model no other backend serves
        wait for it, up to `timeout` seconds, until `started(backend)`."""
        self.pool.starting(backend, timeout)

    def started(self, backend: Backend) -> None:
        """`backend` is up (its model list fetched) or will not be: the requests waiting look again."""
        self.pool.started(backend)
        self.slots.notify()

    def notify(self) -> None:
        """Wake queued requests: a slot freed, a backend joined or its models changed."""
        self.slots.notify()

    @property
    def waiting(self) -> int:
        """Requests in the queue now, waiting for a slot."""
        return self.slots.waiting

    def waiting_by_caller(self) -> dict[str, int]:
        """Requests in the queue now, by caller (`key:<id>` or `ip:<address>`)."""
        return self.slots.waiting_by_caller()

    # -- models ------------------------------------------------------------------------
    async def refresh(self, force: bool = False) -> None:
        await self.pool.refresh(force)

    async def models(self) -> list[dict[str, Any]]:
        """The union of every backend's models (first backend's entry wins a name)."""
        return await self.pool.models()

    async def resolve_model(self, requested: str | None) -> str:
        """The model to use: as asked, through an alias, or (omitted or `default`) the default."""
        return await self.pool.resolve_model(requested)

    async def candidates(self, model: str) -> list[Backend]:
        return await self.pool.candidates(model)

    # -- leasing and serving ---------------------------------------------------------------
    def lease(self, model: str, exclude: set[int] | None = None) -> AsyncContextManager[Backend]:
        """Hold a slot on the best backend for `model`, waiting in the queue when all are full."""
        return self.slots.lease(model, exclude)

    def chat(self, body: dict[str, Any], served: dict[str, Any] | None = None,
             relax_think: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Stream `/api/chat` objects for `body`, retrying elsewhere before the first chunk and
        resuming elsewhere after it.

        `served`, when given, is filled with the name and kind of the backend that answered.
        """
        return self.serving.stream("chat", body, served, relax_think)

    def generate(self, body: dict[str, Any], served: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Stream `/api/generate` objects for `body`, as `chat` does."""
        return self.serving.stream("generate", body, served)

    async def call(self, op: str, body: dict[str, Any], served: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        """A one-shot native call (embed, embeddings, show) on a backend with the model."""
        return await self.serving.call(op, body, served)

    async def loaded(self) -> list[dict[str, Any]]:
        return await self.pool.loaded()

    def streamed(self) -> dict[str, int]:
        """Tokens streamed so far, by backend name (a counter: the history's tokens/s)."""
        counts: dict[str, int] = {}
        for backend in self.pool.backends:
            counts[backend.name] = counts.get(backend.name, 0) + backend.stats.streamed
        return counts

    def stream_stats(self) -> dict[str, int]:
        """Streams resumed on another backend, lost past resuming, stall probes by outcome, and
        requests with a conversation served by its home (hits), elsewhere (yielded: the home was
        full, gone or much slower) or with no home (misses); all 0 with affinity off."""
        serving = self.serving
        affinity = self.affinity.counts if self.affinity is not None else {}
        return {"resumed": serving.resumes["resumed"], "resume_failed": serving.resumes["failed"],
                "stall_probes_alive": serving.stall.probes["alive"], "stalls_lost": serving.stall.probes["lost"],
                "affinity_hits": affinity.get("hit", 0), "affinity_yielded": affinity.get("yielded", 0),
                "affinity_misses": affinity.get("miss", 0)}

    async def close(self) -> None:
        await self.pool.close()
