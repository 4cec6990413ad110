"""The one interface every backend speaks.

The canonical request and stream are Ollama's native ones: a request is the body of `POST /api/chat`
or `POST /api/generate` (a dict; the op says which), and its stream is the sequence of that
endpoint's response objects, the last with `done: true`. Every backend (Ollama over HTTP, an extra upstream, a GPU node
over the relay) speaks that already, so the native API is a passthrough and the OpenAI API
is a pure translation on top (see `ollabridge.api.openai.convert`).
"""

from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator


@dataclass
class BackendHealth:
    ok: bool
    detail: str = ""
    version: str | None = None


#: Weight of the newest measurement in a backend's moving averages of speed.
SPEED_ALPHA = 0.3


@dataclass
class Speed:
    """How fast a backend answers one model: moving averages of its time to first chunk and of its
    tokens a second once streaming, over its finished streams."""

    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    samples: int = 0

    def add(self, ttft_s: float, tokens_per_s: float) -> None:
        if self.samples == 0:
            self.ttft_s, self.tokens_per_s = ttft_s, tokens_per_s
        else:
            self.ttft_s += SPEED_ALPHA * (ttft_s - self.ttft_s)
            self.tokens_per_s += SPEED_ALPHA * (tokens_per_s - self.tokens_per_s)
        self.samples += 1

    def finish_s(self, tokens: int) -> float:
        """Seconds until an answer of `tokens` tokens would have ended."""
        return self.ttft_s + tokens / max(self.tokens_per_s, 1e-6)


@dataclass
class BackendStats:
    in_flight: int = 0
    total: int = 0
    failed: int = 0
    tokens: int = 0
    # Tokens streamed so far, counted as they pass (one a chunk, as Ollama streams; the final chunk's
    # count tops it up): what the Status tab's tokens/s history samples.
    streamed: int = 0
    last_tokens_per_s: float | None = None
    speeds: dict[str, Speed] = field(default_factory=dict)  # by model, once a stream of it finished


class Backend(abc.ABC):
    """A source of chat streams, embeddings and model lists."""

    #: "ollama" (the gateway's own Ollama or in-box engine), "upstream" or "node".
    kind: str = "ollama"
    #: Lower serves first when several backends have a model (GPU nodes before the CPU).
    priority: int = 10
    #: Slots of stopped requests the backend has not let go of yet (relay nodes, until they confirm the
    #: cancel): busy, but free in a moment.
    releasing: int = 0
    #: Whether `probe` can tell a frozen backend from a slow one (the router's stall watch uses it).
    probes: bool = False

    def __init__(self, name: str, slots: int | None = None) -> None:
        self.name = name
        self.slots = slots  # None: no limit of ours (Ollama queues on its own)
        self.stats = BackendStats()
        self._models: list[dict[str, Any]] = []
        self._models_at = 0.0  # when the last model-list fetch ended (0: never fetched)
        self._fetch: asyncio.Task[None] | None = None  # the model-list fetch under way
        self.reachable = False  # whether the last model-list fetch succeeded

    # -- what a backend must implement -------------------------------------------------
    @abc.abstractmethod
    def stream(self, op: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream the response objects of `op` ("chat" or "generate") for `body`. Raises BackendError."""

    @abc.abstractmethod
    async def call(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """One-shot native call: op is "embed", "embeddings" or "show"."""

    @abc.abstractmethod
    async def fetch_models(self) -> list[dict[str, Any]]:
        """The backend's model list, as `/api/tags` model objects."""

    @abc.abstractmethod
    async def health(self) -> BackendHealth:
        """Whether the backend answers now."""

    async def loaded(self) -> list[dict[str, Any]]:
        """Models loaded in memory, as `/api/ps` objects (empty when unknown)."""
        return []

    async def ollama_version(self) -> str | None:
        """The version of the Ollama behind this backend, when it says."""
        return None

    async def close(self) -> None:
        """Release connections."""

    async def probe(self, timeout: float) -> bool | None:
        """Whether the backend shows a sign of life within about `timeout` seconds (None: it cannot
        tell). Asked when one of its streams went silent for much longer than its pace."""
        return None

    def lost(self, reason: str) -> None:
        """Give the backend up (it failed a probe): its streams in flight fail retryably and it takes
        no new requests until it comes back."""

    # -- shared behaviour ---------------------------------------------------------------
    def serves(self, op: str) -> bool:
        """Whether this backend can be sent `op` at all (relay nodes list theirs in `hello`)."""
        return True

    @property
    def available(self) -> bool:
        """Whether a new request may be sent now (relay nodes say no when full or gone)."""
        return self.slots is None or self.stats.in_flight + self.releasing < self.slots

    def cached_models(self) -> list[dict[str, Any]]:
        return self._models

    async def models(self, ttl: float) -> list[dict[str, Any]]:
        """The model list, refreshed when older than `ttl` seconds; [] when unreachable.

        One fetch at a time: a caller joins the fetch under way. With `ttl` 0 (something changed
        just now) a fetch begun before the call is waited out and another one made."""
        if ttl <= 0 and self._fetch is not None:
            await asyncio.shield(self._fetch)
        fetch = self.refresh_soon(ttl)
        if fetch is not None:
            await asyncio.shield(fetch)  # a caller that goes away leaves the fetch to the others
        return self._models

    def refresh_soon(self, ttl: float) -> asyncio.Task[None] | None:
        """Start fetching the model list in the background when it is older than `ttl` seconds and
        no fetch is under way; the fetch under way, or None when the list is fresh."""
        if self._fetch is None and time.monotonic() - self._models_at >= ttl:
            self._fetch = asyncio.get_running_loop().create_task(self._refetch())
        return self._fetch

    @property
    def fetching(self) -> asyncio.Task[None] | None:
        """The model-list fetch under way, if any."""
        return self._fetch

    def stop_fetching(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()

    async def _refetch(self) -> None:
        try:
            try:
                self._models = await self.fetch_models()
                self.reachable = True
            except Exception:
                self._models = []
                self.reachable = False
            self._models_at = time.monotonic()
        finally:
            self._fetch = None

    def has_model(self, model: str) -> bool:
        return any(model_matches(m, model) for m in self._models)

    def measured(self, model: str, ttft_s: float, tokens_per_s: float) -> None:
        """A stream of `model` finished: fold its speed into the moving averages."""
        speeds = self.stats.speeds
        if model not in speeds and len(speeds) >= 256:
            speeds.clear()  # bounded: models are few, but a name is the caller's
        speeds.setdefault(model, Speed()).add(ttft_s, tokens_per_s)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "in_flight": self.stats.in_flight,
                "slots": self.slots, "requests": self.stats.total, "failed": self.stats.failed,
                "models": [m.get("name") or m.get("model") for m in self._models], "speed": self.speeds()}

    def speeds(self) -> dict[str, dict[str, Any]]:
        """The moving averages of its speed, by model (what /health shows)."""
        return {model: {"ttft_s": round(s.ttft_s, 3), "tokens_per_s": round(s.tokens_per_s, 1),
                        "samples": s.samples} for model, s in self.stats.speeds.items()}


def model_matches(entry: dict[str, Any], wanted: str) -> bool:
    """Ollama's naming: `llama3` means `llama3:latest`."""
    names = {entry.get("name"), entry.get("model")}
    return wanted in names or (":" not in wanted and f"{wanted}:latest" in names)


__all__ = ["Backend", "BackendHealth", "BackendStats", "Speed", "model_matches"]
