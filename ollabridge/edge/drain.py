"""Graceful shutdown: the API requests in flight, and the drain that SIGTERM starts.

The edge adds every API request to `inflight` while it runs and refuses new ones (503) once
`draining` is set; `drain()` gives those in flight a deadline, then ends the rest with an error
in their own format (the edge writes it), and tells GPU nodes through the hub.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("ollabridge")


class Drain:
    def __init__(self) -> None:
        self.inflight: set[Any] = set()  # RequestContexts of API requests being served
        self.draining = False
        self._idle = asyncio.Event()

    def enter(self, ctx: Any) -> None:
        self.inflight.add(ctx)

    def leave(self, ctx: Any) -> None:
        self.inflight.discard(ctx)
        if self.draining and not self.inflight:
            self._idle.set()

    async def _until_idle(self, timeout: float) -> None:
        if not self.inflight:
            return
        self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass

    async def run(self, timeout: float, hub: Any) -> dict[str, int]:
        """Refuse new API requests (503), tell GPU nodes (`goaway`), let requests in flight finish
        for up to `timeout` seconds, then end the rest with an error event, and close the nodes'
        sockets (1012: reconnect). Returns what happened."""
        self.draining = True
        left = len(self.inflight)
        log.info("shutting down: %d request(s) in flight get up to %gs to finish", left, timeout)
        hub.goaway(timeout)
        await self._until_idle(timeout)
        cut = len(self.inflight)
        if cut:
            log.warning("shutting down: ending %d request(s) still running after %gs", cut, timeout)
            for ctx in list(self.inflight):
                ctx.abort("shutdown", 503, "The gateway is shutting down; this request was cut. Retry it "
                                           "in a few seconds.")
            await self._until_idle(2)
        await hub.stop(code=1012, reason="gateway restarting")
        return {"in_flight": left, "finished": left - cut, "cut": cut}
