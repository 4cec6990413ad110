"""The composition root: every service a request needs, built from Settings, shared by the API and
the web UI. `start()` / `stop()` bracket their life; nothing else lives here."""

from __future__ import annotations

from ollabridge.backends.ollama import OllamaBackend
from ollabridge.backends.pulls import ModelPuller, wait_until_serving
from ollabridge.config import Settings
from ollabridge.edge.drain import Drain
from ollabridge.edge.guesses import Guesses
from ollabridge.edge.keys import ApiKeys
from ollabridge.edge.metrics import Metrics
from ollabridge.edge.ratelimit import RateLimiter
from ollabridge.engine.mode import EngineMode
from ollabridge.pairing import PairingService
from ollabridge.relay.hub import RelayHub
from ollabridge.routing import Router
from ollabridge.routing.stall import StallPolicy
from ollabridge.stats_history import StatsHistory
from ollabridge.store import open_state
from ollabridge.status import StatusViews


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.router = Router(models_ttl=settings.models_ttl, default_model=settings.default_model,
                             max_queue=settings.max_queue, queue_timeout=settings.queue_timeout,
                             aliases=settings.model_aliases, resume=settings.resume,
                             max_resumes=settings.resume_max, expected_tokens=settings.expected_tokens,
                             affinity=settings.affinity,
                             stall=StallPolicy(settings.stall_after, settings.stall_factor, settings.stall_ping))
        timeouts = dict(connect_timeout=settings.connect_timeout,
                        first_token_timeout=settings.first_token_timeout, idle_timeout=settings.idle_timeout)
        self.ollama = OllamaBackend("ollama", settings.ollama_base_url, **timeouts)
        self.upstreams = [OllamaBackend(f"upstream-{i + 1}", url, kind="upstream", **timeouts)
                          for i, url in enumerate(settings.upstreams)]
        # OLLABRIDGE_MODELS, pulled into Ollama in the background (ollabridge/backends/pulls.py).
        self.puller = ModelPuller(settings.ollama_base_url, settings.pull_models, on_pulled=self._pulled,
                                  after=lambda: wait_until_serving(settings.host, settings.port),
                                  connect_timeout=settings.connect_timeout)
        self.engine = EngineMode(settings, self.ollama, self.router, self.puller)
        # Keys, pairings, device codes, the admin token, rate budgets and lock-outs: in the data dir, or
        # on Redis shared by every replica (OLLABRIDGE_REDIS_URL; ollabridge/store/).
        self.state = open_state(settings.data_path, settings.redis_url)
        # Wrong admin tokens, API keys and device codes, per client address (one guard for all of them).
        self.guesses = Guesses(settings.guess_limit, settings.guess_lockout,
                               on_refuse=lambda: self.metrics.limited("ip", "guesses"), shared=self.state.ledger)
        # GPU nodes: the device-pairing service (owner approves by code) and the relay hub.
        self.pairing = PairingService(settings.data_path, settings.admin_token, settings.public_url,
                                      interval=settings.device_interval, starts_per_minute=settings.device_rate,
                                      max_pending=settings.device_max_pending, guesses=self.guesses,
                                      state=self.state)
        self.hub = RelayHub(self.router, self.pairing, heartbeat_s=settings.relay_heartbeat_s,
                            max_frame=settings.relay_max_frame, first_token_timeout=settings.first_token_timeout,
                            idle_timeout=settings.idle_timeout)
        self.pairing.hub = self.hub
        # The request edge (ollabridge/edge/): keys, limits, requests in flight and the drain, metrics.
        self.keys = ApiKeys(settings.data_path, settings.api_keys, self.pairing.is_admin, state=self.state)
        self.limiter = RateLimiter(shared=self.state.budget)
        self.drain = Drain()
        self.metrics = Metrics(self)
        # The Status tab's last 15 minutes: tokens/s per backend, requests in flight, the queue.
        self.history = StatsHistory(self.router.streamed,
                                    lambda: len(self.drain.inflight), lambda: self.router.waiting,
                                    period=settings.history_period)
        self.views = StatusViews(self)
        # Several replicas (OLLABRIDGE_REDIS_URL): every replica's GPU nodes in this one's router.
        self.presence = self._presence() if settings.redis_url else None

    def _presence(self):
        from ollabridge.replicas.auth import replica_token
        from ollabridge.replicas.presence import Presence
        from ollabridge.replicas.remote import RemoteNodeBackend

        s = self.settings

        def remote(replica_id: str, url: str, info: dict, token: str) -> RemoteNodeBackend:
            return RemoteNodeBackend(replica_id, url, info, token, connect_timeout=s.connect_timeout,
                                     first_token_timeout=s.first_token_timeout, idle_timeout=s.idle_timeout)
        return Presence(s.redis_url, s.replica_url, self.hub, self.router,
                        lambda: replica_token(self.pairing.admin_token), remote)

    async def start(self) -> None:
        self.pairing.open()
        self.keys.open()
        self.keys.drop_admin_token(self.pairing.admin_token)
        self.hub.start()
        for backend in [self.ollama, *self.upstreams]:
            self.router.add(backend)
        self.history.start()
        await self.engine.start()
        if self.presence is not None:
            await self.presence.start()

    async def _pulled(self, model: str) -> None:
        await self.ollama.models(0)  # only the list that changed: a dead upstream must not delay it
        self.router.notify()

    async def stop(self) -> None:
        if self.presence is not None:
            await self.presence.stop()
        await self.history.stop()
        await self.engine.stop()
        await self.hub.stop()
        await self.router.close()
        self.pairing.close()
        self.keys.close()
        self.state.close()
