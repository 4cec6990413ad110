"""The last 15 minutes of the gateway's load, sampled every few seconds: what the Status tab plots.

Every `period` seconds (OLLABRIDGE_HISTORY_PERIOD, 5 by default) a `Sample` is taken: each
backend's tokens a second over the interval just ended (from the tokens it streamed in it, counted
as they pass: not the moving average the router chooses by), the API requests in flight and the
requests waiting in the queue. The samples are kept in a ring buffer bounded at `window` seconds
(15 minutes). The clock is injected, so a test takes samples at the times it says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("ollabridge")

WINDOW_S = 15 * 60.0
#: Backends per sample, the fastest first: the chart stays readable and the buffer bounded when
#: many GPU nodes come and go.
MAX_BACKENDS = 16


@dataclass(frozen=True)
class Sample:
    at: float  # the clock's time (Unix seconds by default)
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # by backend name
    in_flight: int = 0
    queued: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"at": round(self.at, 3), "tokens_per_s": self.tokens_per_s, "in_flight": self.in_flight,
                "queued": self.queued}


class StatsHistory:
    """Samples `tokens()` (tokens streamed so far, by backend: a counter), `in_flight()` and
    `queued()` every `period` seconds, keeping the last `window` seconds."""

    def __init__(self, tokens: Callable[[], dict[str, int]], in_flight: Callable[[], int],
                 queued: Callable[[], int], *, period: float = 5.0, window: float = WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.tokens, self.in_flight, self.queued = tokens, in_flight, queued
        self.period, self.window, self.clock = period, window, clock
        self.samples: deque[Sample] = deque(maxlen=int(window / period) + 1)
        self._last: tuple[float, dict[str, int]] | None = None  # the counters at the previous sample
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> Sample:
        """Take one sample now (the loop calls it every `period`; tests call it directly)."""
        now, counts = self.clock(), dict(self.tokens())
        rates: dict[str, float] = {}
        if self._last is not None and now > self._last[0]:
            then, before = self._last
            for name, count in counts.items():
                made = count - before.get(name, 0)
                if made < 0:  # a backend that left and came back (a node reconnected): counted anew
                    made = count
                rates[name] = round(made / (now - then), 2)
            rates = dict(sorted(rates.items(), key=lambda kv: -kv[1])[:MAX_BACKENDS])
        self._last = (now, counts)
        taken = Sample(now, rates, int(self.in_flight()), int(self.queued()))
        self.samples.append(taken)
        return taken

    def recent(self) -> list[Sample]:
        """The samples of the last `window` seconds, oldest first."""
        since = self.clock() - self.window
        return [s for s in self.samples if s.at >= since]

    # -- the loop, started and stopped with the gateway ---------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stats-history")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a bad reading must not end the history
                log.exception("stats history sample failed")
            await asyncio.sleep(self.period)
