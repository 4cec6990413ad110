"""OLLABRIDGE_ENGINE: whether the gateway's own backend is Ollama or the in-box engine.

`auto` starts the in-box engine as a child process only when nothing answers at OLLAMA_BASE_URL;
`inbox` always does; `ollama` never does. The gateway serves at once either way: the engine loads
its model in the background and joins the router when it answers; requests meanwhile wait for it
(up to OLLABRIDGE_ENGINE_START_TIMEOUT) rather than get 503. The engine is supervised: when it
dies it is started again after a bounded backoff, and requests wait for it the same way. With
Ollama, OLLABRIDGE_MODELS are pulled in the background; the in-box engine pulls nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ollabridge.engine.process import EngineProcess, answers

log = logging.getLogger("ollabridge")


class EngineMode:
    def __init__(self, settings: Any, backend: Any, router: Any, puller: Any) -> None:
        self.settings = settings
        self.backend = backend  # the OllamaBackend at OLLAMA_BASE_URL
        self.router = router
        self.puller = puller
        self.engine: EngineProcess | None = None
        self.active = "ollama"  # or "inbox", or "none" when neither answers
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        mode = self.settings.engine
        if mode == "inbox" or (mode == "auto" and not await answers(self.settings.ollama_base_url)):
            self.active = "inbox"
            self.backend.name = "inbox"
            self.engine = EngineProcess(self.settings.ollama_base_url, self.settings.inbox_model,
                                        self.settings.engine_start_timeout)
            self._engine_down()
            self._task = asyncio.create_task(self._run_engine())
            if self.puller.pulls:
                self.puller.skip("the in-box engine serves OLLABRIDGE_INBOX_MODEL; it does not pull models")
        else:
            log.info("using Ollama at %s", self.settings.ollama_base_url)
            if self.puller.pulls:
                self._task = asyncio.create_task(self.puller.run())

    async def _run_engine(self) -> None:
        assert self.engine is not None
        await self.engine.supervise(self._engine_up, self._engine_down)
        if self.engine.state == "failed":  # its first start failed: it is not coming
            self.active = "none"
        self.router.started(self.backend)

    async def _engine_up(self) -> None:
        await self.backend.models(0)  # its list first: the requests waiting for it look at once
        self.router.started(self.backend)

    def _engine_down(self) -> None:
        """Starting, or died: requests for its model wait for it rather than fail."""
        self.router.starting(self.backend, self.settings.engine_start_timeout)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.engine:
            await self.engine.stop()

    def info(self) -> dict[str, Any]:
        """What /health and the UI show of the engine."""
        info: dict[str, Any] = {"active": self.active, "mode": self.settings.engine,
                                "url": self.settings.ollama_base_url}
        if self.engine is not None:
            info.update(state=self.engine.state, detail=self.engine.detail, restarts=self.engine.restarts,
                        pid=self.engine.pid)
        return info
