"""The gateway's services: backends, router and engine, shared by the API and the web UI."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ollabridge import __version__
from ollabridge.backends.ollama import OllamaBackend
from ollabridge.config import Settings
from ollabridge.keys import ApiKeys
from ollabridge.metrics import Metrics
from ollabridge.pairing import PairingService
from ollabridge.pulls import ModelPuller, wait_until_serving
from ollabridge.ratelimit import RateLimiter
from ollabridge.relay.hub import RelayHub
from ollabridge.router import Router
from ollabridge.supervisor import EngineProcess, answers

log = logging.getLogger("ollabridge")


class Gateway:
    """Everything a request needs, built from Settings; `start()`/`stop()` bracket its life."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.router = Router(models_ttl=settings.models_ttl, default_model=settings.default_model,
                             max_queue=settings.max_queue, queue_timeout=settings.queue_timeout)
        timeouts = dict(connect_timeout=settings.connect_timeout,
                        first_token_timeout=settings.first_token_timeout, idle_timeout=settings.idle_timeout)
        self.ollama = OllamaBackend("ollama", settings.ollama_base_url, **timeouts)
        self.upstreams = [OllamaBackend(f"upstream-{i + 1}", url, kind="upstream", **timeouts)
                          for i, url in enumerate(settings.upstreams)]
        self.engine: EngineProcess | None = None
        self.active_engine = "ollama"  # or "inbox", or "none" when neither answers
        self._engine_task: asyncio.Task | None = None
        # OLLABRIDGE_MODELS, pulled into Ollama in the background (ollabridge/pulls.py).
        self.puller = ModelPuller(settings.ollama_base_url, settings.pull_models, on_pulled=self._pulled,
                                  after=lambda: wait_until_serving(settings.host, settings.port),
                                  connect_timeout=settings.connect_timeout)
        self._pull_task: asyncio.Task | None = None
        # GPU nodes: the device-pairing service (owner approves by code) and the relay hub.
        self.pairing = PairingService(settings.data_path, settings.admin_token, settings.public_url,
                                      interval=settings.device_interval, starts_per_minute=settings.device_rate,
                                      max_pending=settings.device_max_pending)
        self.hub = RelayHub(self.router, self.pairing, heartbeat_s=settings.relay_heartbeat_s,
                            max_frame=settings.relay_max_frame, first_token_timeout=settings.first_token_timeout,
                            idle_timeout=settings.idle_timeout)
        self.pairing.hub = self.hub
        # The API's edge (ollabridge/api/edge.py): keys, limits, requests in flight, metrics.
        self.keys = ApiKeys(settings.data_path, settings.api_keys, self.pairing.is_admin)
        self.limiter = RateLimiter()
        self.metrics = Metrics(self)
        self.inflight: set[Any] = set()  # RequestContexts of API requests being served
        self.draining = False
        self.drained = asyncio.Event()

    async def start(self) -> None:
        self.pairing.open()
        self.keys.open()
        self.keys.drop_admin_token(self.pairing._admin or "")
        self.hub.start()
        for backend in [self.ollama, *self.upstreams]:
            self.router.add(backend)
        mode = self.settings.engine
        if mode == "inbox" or (mode == "auto" and not await answers(self.settings.ollama_base_url)):
            self.active_engine = "inbox"
            self.ollama.name = "inbox"
            self.engine = EngineProcess(self.settings.ollama_base_url, self.settings.inbox_model,
                                        self.settings.engine_start_timeout)
            # Serve at once; the engine's model loads in the background and joins when it answers.
            self._engine_task = asyncio.create_task(self._start_engine())
            if self.puller.pulls:
                self.puller.skip("the in-box engine serves OLLABRIDGE_INBOX_MODEL; it does not pull models")
        else:
            log.info("using Ollama at %s", self.settings.ollama_base_url)
            if self.puller.pulls:
                self._pull_task = asyncio.create_task(self.puller.run())

    async def _pulled(self, model: str) -> None:
        await self.router.refresh(force=True)
        self.router.notify()

    async def _start_engine(self) -> None:
        assert self.engine is not None
        if await self.engine.start():
            await self.router.refresh(force=True)
            self.router.notify()
        else:
            self.active_engine = "none"

    async def stop(self) -> None:
        if self._engine_task:
            self._engine_task.cancel()
        if self._pull_task:
            self._pull_task.cancel()
        if self.engine:
            await self.engine.stop()
        await self.hub.stop()
        await self.router.close()
        self.pairing.close()
        self.keys.close()

    async def drain(self, timeout: float) -> dict[str, int]:
        """Graceful shutdown (SIGTERM): refuse new API requests (503), tell GPU nodes (`goaway`),
        let requests in flight finish for up to `timeout` seconds, then end the rest with an error
        event, and close the nodes' sockets (1012: reconnect). Returns what happened."""
        self.draining = True
        left = len(self.inflight)
        log.info("shutting down: %d request(s) in flight get up to %gs to finish", left, timeout)
        self.hub.goaway(timeout)
        if self.inflight:
            self.drained.clear()
            try:
                await asyncio.wait_for(self.drained.wait(), timeout)
            except TimeoutError:
                pass
        cut = len(self.inflight)
        if cut:
            log.warning("shutting down: ending %d request(s) still running after %gs", cut, timeout)
            for ctx in list(self.inflight):
                ctx.abort("shutdown", 503, "The gateway is shutting down; this request was cut. Retry it "
                                           "in a few seconds.")
            self.drained.clear()
            try:
                await asyncio.wait_for(self.drained.wait(), 2)
            except TimeoutError:
                pass
        await self.hub.stop(code=1012, reason="gateway restarting")
        return {"in_flight": left, "finished": left - cut, "cut": cut}

    # -- what /health, /ollama/status and the UI show ----------------------------------------
    def relay_stats(self) -> dict[str, Any]:
        if self.hub is not None:
            return self.hub.stats()
        return {"nodes_connected": 0, "requests_in_flight": 0, "requests_total": 0,
                "requests_failed": 0, "tokens_relayed": 0}

    async def health(self) -> dict[str, Any]:
        backends = self.router.backends
        checks = await asyncio.gather(*(b.health() for b in backends))
        await self.router.refresh()
        # A backend that just came up (or went down) gets its model list now, not after the TTL.
        changed = [b for b, check in zip(backends, checks) if check.ok != b.reachable]
        await asyncio.gather(*(b.models(0) for b in changed))
        entries = []
        for backend, check in zip(backends, checks):
            entries.append({**backend.describe(), "healthy": check.ok, "detail": check.detail})
        status = "ok" if entries and all(e["healthy"] for e in entries) else "degraded"
        return {"status": status, "version": __version__, "uptime_s": round(time.time() - self.started_at, 1),
                "engine": self.engine_info(), "backends": entries, "relay": self.relay_stats(),
                "pulls": self.puller.snapshot()}

    def engine_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"active": self.active_engine, "mode": self.settings.engine,
                                "url": self.settings.ollama_base_url}
        if self.engine is not None:
            info.update(state=self.engine.state, detail=self.engine.detail)
        return info

    async def status(self) -> dict[str, Any]:
        health, version, loaded = await asyncio.gather(self.ollama.health(), self.ollama.version(),
                                                       self.ollama.loaded())
        models = await self.ollama.models(self.settings.models_ttl)
        return {"ollama": {"reachable": health.ok, "url": self.settings.ollama_base_url, "version": version,
                           "detail": health.detail,
                           "models": [m.get("name") for m in models],
                           "loaded": [m.get("name") for m in loaded]},
                "engine": self.engine_info(),
                "pulls": self.puller.snapshot(),
                "upstreams": [u.describe() for u in self.upstreams],
                "relay": {**self.relay_stats(), "nodes": self.hub.nodes_status() if self.hub else []}}
