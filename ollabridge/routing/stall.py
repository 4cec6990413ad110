"""Noticing a backend that froze mid-stream from the stream's own pace, not only the idle timeout.

A frozen VM (a Colab runtime cut off) keeps its socket open and sends nothing: the relay's
heartbeat finds it after 3 missed beats (30 s by default), the idle timeout after 120 s. A stream
knows sooner: while it waits for its next chunk it is timed, and a wait longer than
`max(after, factor × the longest wait between its chunks so far)` makes the backend suspect. The
backend is then probed (a GPU node: a relay `ping`; any frame back counts): no sign of life within
`ping` seconds (a node: or 3 × its last round trip, if longer) and the backend is lost
(`Backend.lost`): its streams fail retryably and resume elsewhere (serve.py). A backend that
answers is alive and slow: the stream waits on, probed again after twice the silence, until the idle
timeout; a wait that ended in such a probe does not count into the stream's pace.

Nothing is timed before a stream's first chunk (reading a long prompt takes long; the first-token
timeout applies there), nor on backends that cannot be probed (HTTP Ollamas: the idle timeout).
Cost: a clock read per chunk and one timer per stream, re-armed about once per `after` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from ollabridge.backends.base import Backend

log = logging.getLogger("ollabridge")


@dataclass(frozen=True)
class StallPolicy:
    after: float = 1.0  # seconds of silence before any probe (0: no stall detection)
    factor: float = 8.0  # ... or this many times the stream's longest gap so far, if longer
    ping: float = 1.0  # seconds a probed backend has to show a sign of life


class StallWatch:
    """Probes backends whose streams went silent, one probe per backend at a time; counts the
    outcomes (`alive`, `lost`) for the metrics."""

    def __init__(self, policy: StallPolicy) -> None:
        self.policy = policy
        self.probes = {"alive": 0, "lost": 0}
        self._probing: dict[int, asyncio.Future] = {}

    def pace(self, backend: Backend) -> Pace | None:
        """A timer for one stream on `backend`, or None when its stalls cannot be told."""
        if not self.policy.after or not backend.probes:
            return None
        return Pace(self, backend)

    def suspect(self, backend: Backend, pace: Pace, silent: float) -> None:
        probe = self._probing.get(id(backend))
        if probe is None:
            probe = asyncio.ensure_future(self._probe(backend, silent))
            self._probing[id(backend)] = probe
            probe.add_done_callback(lambda _: self._probing.pop(id(backend), None))
        probe.add_done_callback(pace.answered)

    async def _probe(self, backend: Backend, silent: float) -> bool | None:
        try:
            alive = await backend.probe(self.policy.ping)
        except Exception:  # noqa: BLE001 - a probe that breaks tells nothing; the idle timeout still holds
            log.exception("%s: probe failed", backend.name)
            return None
        if alive is False:
            self.probes["lost"] += 1
            log.warning("%s: a stream silent for %.1fs and no answer to a probe; giving the backend up",
                        backend.name, silent)
            backend.lost(f"stalled: a stream silent for {silent:.1f}s, then no answer to a ping")
        elif alive:
            self.probes["alive"] += 1
        return alive


class Pace:
    """One stream on one backend: `waiting()` before it awaits a chunk, `arrived()` after, `close()`
    when it ends."""

    __slots__ = ("watch", "backend", "loop", "since", "longest", "chunks", "timer", "patience", "probed",
                 "closed")

    def __init__(self, watch: StallWatch, backend: Backend) -> None:
        self.watch = watch
        self.backend = backend
        self.loop = asyncio.get_running_loop()
        self.since: float | None = None  # when the wait for the next chunk began (None: not waiting)
        self.longest = 0.0
        self.chunks = 0
        self.timer: asyncio.TimerHandle | None = None
        self.patience = 1.0  # doubles after each probe the backend answered, within one wait
        self.probed = False  # a probe is out, or this wait had one
        self.closed = False

    def threshold(self) -> float:
        policy = self.watch.policy
        return max(policy.after, policy.factor * self.longest) * self.patience

    def waiting(self) -> None:
        self.since = self.loop.time()
        if self.chunks and self.timer is None and not self.probed:
            self.timer = self.loop.call_at(self.since + self.threshold(), self._check)

    def arrived(self) -> None:
        if self.chunks and self.since is not None and not self.probed:
            gap = self.loop.time() - self.since
            if gap > self.longest:
                self.longest = gap
        self.chunks += 1
        self.since = None
        self.patience = 1.0
        self.probed = False

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check(self) -> None:
        self.timer = None
        if self.since is None or self.closed or self.probed:
            return  # not waiting now: the next wait arms the timer again
        due, now = self.since + self.threshold(), self.loop.time()
        if now < due:
            self.timer = self.loop.call_at(due, self._check)
            return
        self.probed = True
        self.watch.suspect(self.backend, self, now - self.since)

    def answered(self, probe: asyncio.Future) -> None:
        if self.closed or probe.cancelled() or probe.exception() is not None or probe.result() is not True:
            return  # lost (the stream fails and ends) or no way to tell: nothing more to time
        if self.since is None:
            self.probed = False
            return
        self.patience *= 2
        self.timer = self.loop.call_at(self.since + self.threshold(), self._recheck)

    def _recheck(self) -> None:
        self.probed = False
        self._check()


__all__ = ["Pace", "StallPolicy", "StallWatch"]
