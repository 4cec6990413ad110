"""Leasing a slot on a backend, and the queue for when every slot is taken.

Among the pool's members that serve a model, the best free one is the one that would finish the
answer soonest by its measured speed for the model (`Speed`: time to first chunk + expected tokens /
tokens a second; expected: the request's `num_predict`, else `expected_tokens`), a backend not
measured yet counting as fast as the best measured one; among those within `SPEED_TOLERANCE` of the
soonest, the lowest `priority` (GPU nodes before the Space's CPU, unless measurably slower), then
the fewest requests in flight; never past a backend's slots.
When none is free the request waits in a bounded queue (`max_queue` deep, `queue_timeout` long).
The queue is fair across callers (`caller`: the API key, else the client address) and first come,
first served within each, by start-time fair queueing: every request leased (served at once or
queued) gets a start tag, max(the virtual time, where its caller's previous request ends), and
ends 1 / weight later; the queue is served by start tag, ties in arrival order, and the virtual
time is the start tag of the request served last. So the callers waiting are served round-robin (a
caller with weight 2 gets two turns to another's one), and one caller's 50 queued requests put
another's one behind none of them, only the requests already running. Whenever a slot
frees, a backend joins or its models change (`notify`), the waiters are handed free slots in that
order, each slot taken at once on the waiter's behalf, so a newcomer never gets a freed slot ahead
of a request already waiting.

With conversation affinity (`affinity.py`), a request whose conversation has a home (the backend
that served its longest recent prefix) takes the home while it is free and its estimated finish
(without its time to first chunk, which the cached prefix saves) is within `affinity.SLOWER` of the
soonest; otherwise the choice above, where among backends equal by priority and load the one
given a conversation least recently serves.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

from ollabridge.backends.base import Backend
from ollabridge.errors import BackendError, NoBackend
from ollabridge.routing.affinity import MEASURED, SLOWER, Affinity
from ollabridge.routing.pool import Pool

#: Estimated finishes this much (relatively) later than the soonest still count as as soon: priority
#: and load decide between them (moving averages are noisy; a GPU node keeps its place unless it is
#: measurably slower).
SPEED_TOLERANCE = 0.15


@dataclass(eq=False)
class _Waiter:
    """A request in the queue: what it may be served by, and where its slot is handed to it."""

    model: str
    exclude: set[int]
    tag: tuple[float, int]  # its turn: (start tag, arrival), lowest served first
    expected: int  # tokens it expects, for the estimate of each backend's finish
    home: Backend | None  # the backend holding its conversation's prefix, if any
    caller: str = ""  # whose turn it is (the API key or client address), for the queue per caller
    slot: asyncio.Future[Backend] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Slots:
    def __init__(self, pool: Pool, *, max_queue: int = 64, queue_timeout: float = 60.0,
                 expected_tokens: int = 256, affinity: Affinity | None = None) -> None:
        self.pool = pool
        self.affinity = affinity
        self.expected_tokens = expected_tokens
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._queue: list[_Waiter] = []  # sorted by tag
        self._arrivals = itertools.count()
        self._now = 0.0  # the virtual time: the start tag of the request served last
        self._ends: dict[str, float] = {}  # where each caller's latest request ends, in virtual time

    @property
    def waiting(self) -> int:
        """Requests in the queue now, waiting for a slot."""
        return len(self._queue)

    def waiting_by_caller(self) -> dict[str, int]:
        """Requests in the queue now, by caller (the edge's identity: `key:<id>` or `ip:<address>`)."""
        counts: dict[str, int] = {}
        for waiter in self._queue:
            counts[waiter.caller] = counts.get(waiter.caller, 0) + 1
        return counts

    def notify(self) -> None:
        """A slot freed, a backend joined or its models changed: hand free slots to the waiters in
        arrival order (each can only take a backend that serves its model), and fail those whose
        model no backend serves any more."""
        for waiter in list(self._queue):
            if waiter.slot.done():  # gave up a moment ago (timed out, client gone): its task is yet to run
                self._queue.remove(waiter)
                continue
            live = self.pool.serving(waiter.model, waiter.exclude)
            if not live:
                self._queue.remove(waiter)
                waiter.slot.set_exception(NoBackend(f"No backend serving '{waiter.model}' is up.",
                                                    headers={"Retry-After": "5"}))
                continue
            backend = self._take(live, waiter.exclude, waiter.model, waiter.expected, waiter.home)
            if backend is not None:
                self._queue.remove(waiter)
                self._now = max(self._now, waiter.tag[0])
                waiter.slot.set_result(backend)
        if not self._queue:
            self._ends.clear()  # nobody waits: no turn to remember

    def _start(self, caller: str, weight: float) -> float:
        """The start tag of `caller`'s next request (and its end, 1 / weight later, noted)."""
        start = max(self._now, self._ends.get(caller, 0.0))
        if len(self._ends) > 4096:  # bounded: an end already passed counts as none
            self._ends = {c: end for c, end in self._ends.items() if end > self._now}
        self._ends[caller] = start + 1.0 / max(weight, 1e-3)
        return start

    def _take(self, backends: list[Backend], exclude: set[int], model: str, expected: int,
              home: Backend | None = None) -> Backend | None:
        """The best free backend among `backends`, its slot taken (in flight + 1); None when all are full,
        or when a better one is only held until it lets go of a stopped request (it is free in a moment:
        wait for it, woken by notify, rather than fall back to a slower one). `home`, when free and
        not much slower than the soonest, is the best."""
        members = [b for b in backends if id(b) not in exclude and b in self.pool.backends]
        available = [b for b in members if b.available]
        if home is not None and home in available and _near_soonest(home, available, model, expected):
            home.stats.in_flight += 1
            return home
        free = _soonest(available, model, expected)
        since = self.affinity.since if self.affinity is not None else _never
        best = min(free, key=lambda b: (b.priority, b.stats.in_flight, since(b))) if free else None
        soon = [b.priority for b in members
                if b.releasing and b not in free and b.stats.in_flight < (b.slots or 0)]
        if best is None or (soon and min(soon) < best.priority):
            return None
        best.stats.in_flight += 1
        return best

    @asynccontextmanager
    async def lease(self, model: str, exclude: set[int] | None = None, caller: str = "",
                    weight: float = 1.0, expected: int | None = None,
                    home: Backend | None = None) -> AsyncIterator[Backend]:
        """Hold a slot on the best backend for `model` (for an answer of about `expected` tokens;
        `home` first, see `_take`), waiting in the queue (in `caller`'s turn, `weight` times as many
        turns as a caller of weight 1) when all are full."""
        exclude = exclude or set()
        expected = expected or self.expected_tokens
        backends = await self.pool.candidates(model)
        if self._queue:
            self.notify()  # whatever is free goes to the requests that came first
        backend = self._take(backends, exclude, model, expected, home)
        if backend is None:
            backend = await self._wait_for_slot(model, exclude, caller, weight, expected, home)
        else:
            self._now = max(self._now, self._start(caller, weight))  # served at once: its turn, taken
        backend.stats.total += 1
        try:
            yield backend
        except BackendError:
            backend.stats.failed += 1
            raise
        finally:
            backend.stats.in_flight -= 1
            self.notify()

    async def _wait_for_slot(self, model: str, exclude: set[int], caller: str, weight: float,
                             expected: int, home: Backend | None) -> Backend:
        """Wait in line for a slot (already taken on this request's behalf when it is handed over)."""
        if len(self._queue) >= self.max_queue:
            raise NoBackend(f"All backends serving '{model}' are busy and the queue is full.",
                            headers={"Retry-After": "5"})
        waiter = _Waiter(model, exclude, (self._start(caller, weight), next(self._arrivals)), expected, home,
                         caller)
        bisect.insort(self._queue, waiter, key=lambda w: w.tag)
        try:
            async with asyncio.timeout(self.queue_timeout):
                return await waiter.slot
        except BaseException as exc:
            self._leave(waiter)
            if isinstance(exc, TimeoutError):
                raise NoBackend(f"All backends serving '{model}' stayed busy for "
                                f"{self.queue_timeout:g}s.", headers={"Retry-After": "5"}) from None
            raise

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter gave up (timed out, or its client left): out of the queue; a slot handed to it in
        the meantime goes to the next in line."""
        if waiter in self._queue:
            self._queue.remove(waiter)
        slot = waiter.slot
        if slot.done() and not slot.cancelled() and slot.exception() is None:
            slot.result().stats.in_flight -= 1
            self.notify()
        elif not slot.done():
            slot.cancel()


def _never(_backend: Backend) -> float:
    return 0.0


def _near_soonest(home: Backend, free: list[Backend], model: str, expected: int) -> bool:
    """Whether `home`'s estimated finish is within affinity.SLOWER of the soonest of `free` (a home
    measured on fewer than affinity.MEASURED streams of the model: as soon as the soonest). The home's
    counts without its time to first chunk: its average is mostly prompts evaluated whole, and the
    cached prefix is what it saves."""
    own = home.stats.speeds.get(model)
    if own is None or own.samples < MEASURED:
        return True
    finish = [s.finish_s(expected) for b in free if (s := b.stats.speeds.get(model)) is not None]
    return own.finish_s(expected) - own.ttft_s <= min(finish) * (1 + SLOWER)


def _soonest(free: list[Backend], model: str, expected: int) -> list[Backend]:
    """Those of `free` whose estimated finish of an `expected`-token answer of `model` is within
    SPEED_TOLERANCE of the soonest (a backend not measured for the model: as soon as the soonest)."""
    finish = {id(b): s.finish_s(expected) for b in free if (s := b.stats.speeds.get(model)) is not None}
    if not finish:
        return free
    soonest = min(finish.values()) * (1 + SPEED_TOLERANCE)
    return [b for b in free if finish.get(id(b), 0.0) <= soonest]
