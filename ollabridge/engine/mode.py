"""OLLABRIDGE_ENGINE: whether the gateway's own backend is Ollama or the in-box engine.

`auto` starts the in-box engine as a child process only when nothing answers at OLLAMA_BASE_URL;
`inbox` always does; `ollama` never does. The gateway serves at once either way: the engine loads
its model in the background and joins the router when it answers. With Ollama, OLLABRIDGE_MODELS
are pulled in the background; the in-box engine pulls nothing.
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
            self._task = asyncio.create_task(self._start_engine())
            if self.puller.pulls:
                self.puller.skip("the in-box engine serves OLLABRIDGE_INBOX_MODEL; it does not pull models")
        else:
            log.info("using Ollama at %s", self.settings.ollama_base_url)
            if self.puller.pulls:
                self._task = asyncio.create_task(self.puller.run())

    async def _start_engine(self) -> None:
        assert self.engine is not None
        if await self.engine.start():
            await self.router.refresh(force=True)
            self.router.notify()
        else:
            self.active = "none"

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
            info.update(state=self.engine.state, detail=self.engine.detail)
        return info
