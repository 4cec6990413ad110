"""Serving a request on a leased backend, and counting the tokens it made.

Streams (chat, generate) and one-shot calls (embed, embeddings, show) go through one retry loop: a
backend that fails retryably before anything reached the caller is left for another that serves the
model, at most `retries` times. Backends that cannot do the op (relay nodes on an older agent) are
never sent it. With `relax_think`, a `think` the model cannot honour ("does not support thinking")
is dropped and the request sent again: API families whose clients always ask for thinking (Claude
Code) still get an answer from models that do not think. A stream's last chunk adds its tokens and
speed to the backend's stats.

Once a stream's chunks reached the caller, a backend lost mid-answer (its socket gone, its error,
a stall the pace watch noticed, the idle timeout: a BackendError with status >= 500) is **resumed**:
the rest of the answer is asked of another backend serving the model and spliced into the same
stream (`resume.py`: the request that continues it, the chunks that join), at most `max_resumes`
times per stream, with `resume` on (OLLABRIDGE_RESUME). When it cannot be (off, the bound reached,
no other backend has the model, a request that cannot be continued) the failure reaches the caller
as before. Streams on backends that can be probed are timed by the stall watch (`stall.py`).

With conversation affinity on (`affinity.py`), each lease asks first for the backend that served the
longest recent prefix of the request's conversation, and the backend leased is remembered for it;
the first lease of each request counts as a hit, a miss or yielded.
"""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator, Callable, TypeVar

from ollabridge.backends.base import Backend
from ollabridge.errors import BackendError, NoBackend
from ollabridge.routing.affinity import conversation
from ollabridge.routing.pool import Pool
from ollabridge.routing.resume import Transcript
from ollabridge.routing.slots import Slots
from ollabridge.routing.stall import Pace, StallPolicy, StallWatch

T = TypeVar("T")
log = logging.getLogger("ollabridge")


class Serving:
    def __init__(self, pool: Pool, slots: Slots, *, retries: int = 2, resume: bool = True, max_resumes: int = 2,
                 stall: StallPolicy | None = None) -> None:
        self.pool = pool
        self.slots = slots
        self.retries = retries
        self.resume = resume
        self.max_resumes = max_resumes
        self.stall = StallWatch(stall or StallPolicy())
        self.resumes = {"resumed": 0, "failed": 0}  # continuations started; streams lost past resuming
        # (backend, model) pairs that answered "does not support thinking": later requests drop the
        # hint before they are sent, not after a refused first try (bounded: cleared past 4096).
        self.thinkless: set[tuple[str, str]] = set()

    def stream(self, op: str, body: dict[str, Any], served: dict[str, Any] | None = None,
               relax_think: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Stream the `op` objects ("chat": `/api/chat`, "generate": `/api/generate`) for `body`,
        retrying elsewhere before the first chunk and resuming elsewhere after it.

        `served`, when given, is filled with the name and kind of the backend that answered (the
        last one, after a resume; `resumed` counts the resumes), and with its final chunk under "done".
        Its `caller` and `weight` (the edge's: API key, else client address) set the request's
        turn in the queue.
        """
        transcript = Transcript(op)

        def run(backend: Backend, segment: str, sent: dict[str, Any]) -> Metered:
            return Metered(backend, backend.stream(segment, sent), served, transcript, self.stall.pace(backend),
                           sent.get("model", ""))
        return self._serve(op, body, served, relax_think, run, transcript)

    async def call(self, op: str, body: dict[str, Any], served: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        """A one-shot native call (embed, embeddings, show) on a backend with the model."""
        async def once(backend: Backend, segment: str, sent: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
            yield await backend.call(segment, sent)

        # Drained, not abandoned after the first item: the slot is free again when this returns.
        [result] = [item async for item in self._serve(op, body, served, False, once)]
        return result

    async def _serve(self, op: str, body: dict[str, Any], served: dict[str, Any] | None, relax_think: bool,
                     run: Callable[[Backend, str, dict[str, Any]], AsyncIterator[T]],
                     transcript: Transcript | None = None) -> AsyncIterator[T]:
        """The items `run(backend, op, body)` makes on a leased backend; on a retryable BackendError
        before the first item, the same again on a backend not tried yet; after it (streams), the
        continuation on a backend not lost yet."""
        model = body.get("model", "")
        caller, weight = (served or {}).get("caller") or "", (served or {}).get("weight") or 1.0
        segment, sent_body = op, body
        failed: set[int] = set()
        tried = failed | self._cannot(op)
        if tried:
            await self._some_can(op, model, tried)
        attempts = 0
        affinity = self.slots.affinity
        conv = conversation(segment, sent_body) if affinity is not None else None
        while True:
            backend: Backend | None = None
            sent = False
            home = affinity.home(conv) if affinity is not None else None
            try:
                async with self.slots.lease(model, tried, caller, weight, _expected(sent_body), home) as backend:
                    attempts += 1
                    tried.add(id(backend))
                    if affinity is not None:
                        if attempts == 1:
                            affinity.count(conv, home, backend)
                        affinity.served(conv, backend)
                    if served is not None:
                        served.update(backend=backend.name, kind=backend.kind)
                    thinkless = relax_think and "think" in sent_body and (backend.name, model) in self.thinkless
                    items = run(backend, segment, _without_think(sent_body) if thinkless else sent_body)
                    try:
                        async for item in items:
                            sent = True
                            yield item
                    finally:
                        if isinstance(items, Metered):
                            items.ended()
                        # Closed now, not by the garbage collector: a backend abandoned mid-stream stops at
                        # once (a node gets its cancel) while its slot is still leased.
                        await items.aclose()
                    return
            except BackendError as exc:
                if not sent and relax_think and "think" in sent_body and _cannot_think(exc) and backend is not None:
                    if len(self.thinkless) > 4096:
                        self.thinkless.clear()
                    self.thinkless.add((backend.name, model))
                    tried.discard(id(backend))  # the same backend, without the hint
                    failed.discard(id(backend))
                    continue
                if backend is not None:
                    failed.add(id(backend))
                if transcript is not None and transcript.started:
                    resumed = self._continue(exc, op, body, model, failed, transcript, backend)
                    if resumed is None:
                        raise
                    if resumed[0] == "done":  # the answer was lost just at its length: it ends here
                        if served is not None:
                            served["done"] = resumed[1]
                        yield resumed[1]  # type: ignore[misc] - a final chunk, for a stream
                        return
                    segment, sent_body = resumed
                    tried = failed | self._cannot(segment)
                    conv = conversation(segment, sent_body) if affinity is not None else None
                    if served is not None:
                        served["resumed"] = transcript.resumes
                    continue
                if sent or not exc.retryable or attempts > self.retries or not self.pool.serving(model, tried):
                    raise

    def _continue(self, exc: BackendError, op: str, body: dict[str, Any], model: str, failed: set[int],
                  transcript: Transcript, backend: Backend | None) -> tuple[str, Any] | None:
        """After a failure mid-stream: ("done", final chunk) when the answer had just reached its
        length, (op, body) of the continuation when another backend may finish it, else None."""
        nxt = None
        if self.resume and exc.status >= 500:
            final = transcript.exhausted(body)
            if final is not None:
                return "done", final
            nxt = transcript.continuation(body)
            if nxt is not None and (transcript.resumes >= self.max_resumes or
                                    not self.pool.serving(model, failed | self._cannot(nxt[0]))):
                nxt = None
        if nxt is None:
            self.resumes["failed"] += 1
            return None
        transcript.next_segment(nxt[0])
        self.resumes["resumed"] += 1
        log.info("resuming a stream of '%s' lost on %s (%s) after %d tokens, as %s",
                 model, backend.name if backend else "?", exc.message, transcript.output_tokens, nxt[0])
        return nxt

    def _cannot(self, op: str) -> set[int]:
        return {id(b) for b in self.pool.backends if not b.serves(op)}

    async def _some_can(self, op: str, model: str, cannot: set[int]) -> None:
        """NoBackend when every backend with `model` is one that cannot do `op`."""
        if all(id(b) in cannot for b in await self.pool.candidates(model)):
            raise NoBackend(f"No backend serving '{model}' can answer '{op}': its GPU nodes run an older "
                            "agent; update ollabridge on them.", headers={"Retry-After": "30"})


def _expected(body: dict[str, Any]) -> int | None:
    """The tokens the request asks for at most (`num_predict`), when it says."""
    options = body.get("options")
    wanted = options.get("num_predict") if isinstance(options, dict) else None
    return wanted if isinstance(wanted, int) and wanted > 0 else None


def _without_think(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "think"}


def _cannot_think(exc: BackendError) -> bool:
    return exc.status == 400 and "does not support thinking" in exc.message


class Metered:
    """A backend's stream, passed through the stream's `Transcript` (what reached the caller; the
    chunks of a continuation spliced in); its last chunk counts into the backend's stats and goes to
    `served["done"]` (token counts for the metrics and the log line). `pace`, when given, times the
    waits for the stall watch.

    A plain iterator, not a generator: it adds no generator of its own to finalize when the caller
    abandons the stream, so the backend's stream is closed as promptly as if iterated directly."""

    __slots__ = ("backend", "chunks", "served", "transcript", "pace", "model", "started", "first", "finished",
                 "outputs")

    def __init__(self, backend: Backend, chunks: AsyncIterator[dict[str, Any]], served: dict[str, Any] | None,
                 transcript: Transcript, pace: Pace | None, model: str = "") -> None:
        self.backend, self.chunks, self.served, self.model = backend, aiter(chunks), served, model
        self.transcript, self.pace = transcript, pace
        self.started = time.monotonic()
        self.first: float | None = None
        self.finished = False
        self.outputs = 0  # chunks before the last (each one token), counted into the backend's `streamed`

    def __aiter__(self) -> Metered:
        return self

    async def aclose(self) -> None:
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()

    async def __anext__(self) -> dict[str, Any]:
        pace = self.pace
        if pace is None:
            chunk = await anext(self.chunks)
        else:
            pace.waiting()
            try:
                chunk = await anext(self.chunks)
            finally:
                pace.arrived()
        if self.first is None:
            self.first = time.monotonic()
        if chunk.get("done"):
            self.finished = True
            count_tokens(self.backend, chunk, self.started, self.first, self.model, self.outputs)
            chunk = self.transcript.final(chunk)
            if self.served is not None:
                self.served["done"] = chunk
            return chunk
        self.outputs += 1
        self.backend.stats.streamed += 1
        return self.transcript.take(chunk)

    def ended(self) -> None:
        """The stream stopped (finished, failed or abandoned): stop timing it; when it did not
        finish, carry what it streamed into the transcript (a continuation's final chunk adds it)."""
        if self.pace is not None:
            self.pace.close()
        if not self.finished:
            now = time.monotonic()
            self.backend.stats.tokens += self.transcript.tokens
            self.transcript.lost(int((now - self.started) * 1e9) if self.first else 0,
                                 int((now - self.first) * 1e9) if self.first else 0)


def count_tokens(backend: Backend, chunk: dict[str, Any], started: float, first: float, model: str,
                 streamed: int) -> None:
    tokens = int(chunk.get("eval_count") or 0)
    backend.stats.tokens += tokens
    backend.stats.streamed += max(0, tokens - streamed)  # the tokens no chunk of their own carried
    duration = chunk.get("eval_duration") or 0
    if tokens and duration:
        backend.stats.last_tokens_per_s = tokens / (duration / 1e9)
    elif tokens:
        backend.stats.last_tokens_per_s = tokens / max(time.monotonic() - started, 1e-6)
    if tokens and model:
        backend.measured(model, first - started, backend.stats.last_tokens_per_s or 0.0)
