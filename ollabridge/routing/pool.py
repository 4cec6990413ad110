"""Which backends there are and which models they serve.

The pool holds the members (the local Ollama, extra upstreams, GPU nodes as they join and leave)
and their model lists, refreshed in the background when older than `models_ttl`, one fetch per
member at a time. From those it answers: the union of the models, the model to use when none was
asked for, and which members serve a model (or why none does: ModelNotFound when the model is
nowhere, NoBackend when no member answers at all).

A request never waits for a list it does not need: a model some member lists is served at once
however slow another member is (a dead or black-holed upstream); only a model no list has yet
waits, and only for the fetches already under way (a first fetch, or one due by the TTL) of
members that answered last time, never forcing new ones.

A member may be marked as starting (`starting`/`started`: the in-box engine at boot or after it
died). It serves nothing meanwhile, and a request that finds no member for its model waits for
it, up to the timeout given, instead of failing at once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from dataclasses import dataclass
from typing import Any, Iterable

from ollabridge.backends.base import Backend
from ollabridge.errors import ModelNotFound, NoBackend


@dataclass
class _Coming:
    """A member that is starting: how long a request may wait for it, and its start's end."""

    backend: Backend
    timeout: float
    arrived: asyncio.Future[None]


class Pool:
    def __init__(self, *, models_ttl: float = 5.0, default_model: str = "",
                 aliases: Iterable[tuple[str, str]] = ()) -> None:
        self.backends: list[Backend] = []
        self._coming: dict[int, _Coming] = {}  # members starting, by id()
        self.models_ttl = models_ttl
        self.default_model = default_model
        self.aliases = list(aliases)  # (glob pattern, served model), first match wins

    # -- membership --------------------------------------------------------------------
    def add(self, backend: Backend) -> None:
        self.backends.append(backend)
        backend.refresh_soon(self.models_ttl)  # its list is on its way before the first request

    def remove(self, backend: Backend) -> None:
        if backend in self.backends:
            self.backends.remove(backend)

    def serving(self, model: str, exclude: Iterable[int] = ()) -> list[Backend]:
        """The members whose cached list has `model`, but for those whose id() is in `exclude` and
        those still starting."""
        return [b for b in self.backends
                if b.has_model(model) and id(b) not in exclude and id(b) not in self._coming]

    # -- members on their way ----------------------------------------------------------
    def starting(self, backend: Backend, timeout: float) -> None:
        """`backend` is starting: until `started(backend)`, requests that find no other member for
        their model wait for it, each up to `timeout` seconds."""
        if id(backend) not in self._coming:
            self._coming[id(backend)] = _Coming(backend, timeout, asyncio.get_running_loop().create_future())

    def started(self, backend: Backend) -> None:
        """`backend` answers now (its list fetched), or will not: the requests waiting for it look again."""
        coming = self._coming.pop(id(backend), None)
        if coming is not None:
            coming.arrived.set_result(None)

    async def _arrival(self, model: str | None) -> list[Backend]:
        """Wait for the members still starting until one serves `model` (with None: until all have
        started), or until their timeout passed; the members serving `model` then."""
        if not self._coming:
            return []
        deadline = time.monotonic() + max(c.timeout for c in self._coming.values())
        while self._coming and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait([c.arrived for c in self._coming.values()], timeout=remaining,
                               return_when=asyncio.FIRST_COMPLETED)
            if model and self.serving(model):
                break
        return self.serving(model) if model else []

    # -- models ------------------------------------------------------------------------
    def refresh_soon(self) -> None:
        """Start, in the background, the fetch of every list older than `models_ttl` (none waits)."""
        for backend in self.backends:
            backend.refresh_soon(self.models_ttl)

    async def refresh(self, force: bool = False) -> None:
        """Fetch the stale lists (all of them when `force`: something changed) and wait for them."""
        ttl = 0.0 if force else self.models_ttl
        await asyncio.gather(*(b.models(ttl) for b in self.backends))

    async def _first_lists(self) -> None:
        """Wait for the first fetch of members never fetched yet (right after start)."""
        first = [b.fetching for b in self.backends if b.fetching is not None and not b._models_at]
        if first:
            await asyncio.wait(first)

    async def _listed(self, model: str) -> list[Backend]:
        """Wait for the fetches under way, but for those of members that failed their last one, until
        a member serves `model`; those that do ([] when none)."""
        pending = {b.fetching for b in self.backends
                   if b.fetching is not None and (b.reachable or not b._models_at)}
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            found = self.serving(model)
            if found:
                return found
        return self.serving(model)

    async def models(self) -> list[dict[str, Any]]:
        """The union of every backend's models (first backend's entry wins a name)."""
        self.refresh_soon()
        await self._first_lists()
        seen: dict[str, dict[str, Any]] = {}
        for backend in sorted(self.backends, key=lambda b: b.priority):
            for entry in backend.cached_models():
                name = entry.get("name") or entry.get("model")
                if name and name not in seen:
                    seen[name] = {**entry, "ollabridge": {"backend": backend.name, "kind": backend.kind}}
        return list(seen.values())

    async def resolve_model(self, requested: str | None) -> str:
        """The model to use: as asked when some backend serves it; else the first alias whose pattern
        matches (OLLABRIDGE_MODEL_ALIASES); when omitted or `default`, the default model, else the
        first served."""
        if requested and requested != "default":
            if self.aliases and not self.serving(requested):
                for pattern, target in self.aliases:
                    if fnmatch.fnmatchcase(requested, pattern):
                        return target
            return requested
        names = [m.get("name") or m.get("model") for m in await self.models()]
        if not names and self._coming:  # nothing served yet: what the member on its way serves
            await self._arrival(None)
            names = [m.get("name") or m.get("model") for m in await self.models()]
        if self.default_model in names or not names:
            return self.default_model
        return names[0]

    async def candidates(self, model: str) -> list[Backend]:
        self.refresh_soon()
        found = self.serving(model) or await self._listed(model) or await self._arrival(model)
        if not found:
            if self._coming:
                raise NoBackend(" and ".join(c.backend.name for c in self._coming.values())
                                + " is still starting; try again shortly.", headers={"Retry-After": "5"})
            if not any(b.reachable or b.cached_models() for b in self.backends):
                raise NoBackend("No backend is up: " + "; ".join(
                    f"{b.name} does not answer" for b in self.backends) + ".", headers={"Retry-After": "5"})
            names = sorted({m.get("name") or m.get("model") for m in await self.models()} - {None})
            raise ModelNotFound(model, names)
        return found

    # -- what the members report -------------------------------------------------------
    async def loaded(self) -> list[dict[str, Any]]:
        results = await asyncio.gather(*(b.loaded() for b in self.backends))
        return [m for models in results for m in models]

    async def close(self) -> None:
        for backend in self.backends:
            backend.stop_fetching()
        await asyncio.gather(*(b.close() for b in self.backends), return_exceptions=True)
