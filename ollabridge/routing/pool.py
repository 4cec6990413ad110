"""Which backends there are and which models they serve.

The pool holds the members (the local Ollama, extra upstreams, GPU nodes as they join and leave)
and their model lists, refreshed when older than `models_ttl`. From those it answers: the union of
the models, the model to use when none was asked for, and which members serve a model (or why none
does: ModelNotFound when the model is nowhere, NoBackend when no member answers at all).
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from typing import Any, Iterable

from ollabridge.backends.base import Backend
from ollabridge.errors import ModelNotFound, NoBackend


class Pool:
    def __init__(self, *, models_ttl: float = 5.0, default_model: str = "",
                 aliases: Iterable[tuple[str, str]] = ()) -> None:
        self.backends: list[Backend] = []
        self.models_ttl = models_ttl
        self.default_model = default_model
        self.aliases = list(aliases)  # (glob pattern, served model), first match wins

    # -- membership --------------------------------------------------------------------
    def add(self, backend: Backend) -> None:
        self.backends.append(backend)

    def remove(self, backend: Backend) -> None:
        if backend in self.backends:
            self.backends.remove(backend)

    def serving(self, model: str, exclude: Iterable[int] = ()) -> list[Backend]:
        """The members whose cached list has `model`, but for those whose id() is in `exclude`."""
        return [b for b in self.backends if b.has_model(model) and id(b) not in exclude]

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
        if self.default_model in names or not names:
            return self.default_model
        return names[0]

    async def candidates(self, model: str) -> list[Backend]:
        await self.refresh()
        found = self.serving(model)
        if not found:  # a model pulled a moment ago: look once more, fresh
            await self.refresh(force=True)
            found = self.serving(model)
        if not found:
            if not any(b.reachable for b in self.backends):
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
        await asyncio.gather(*(b.close() for b in self.backends), return_exceptions=True)
