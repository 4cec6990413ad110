"""A GPU node connected to another replica, as a Backend in this replica's router.

Its requests go to the owning replica's internal endpoint (`/internal/nodes/{node_id}/api/...`, the
Ollama native API of that one node; ollabridge/api/internal_routes.py) over the same lean HTTP/1.1
pool the Ollama backend uses, so it is an `OllamaBackend` whose base URL is that endpoint. What it
serves, its slots and its measured speed come from the owner's presence entry (`update`), not from
a fetch: listing models never crosses replicas.

Slots: the owner leases the node's slot itself (queueing the request in its own fair queue when the
node is full), so a node shared by several replicas is never over-subscribed. Here it counts as full
when this replica's requests on it and those the owner last reported beyond them fill its slots:
a request then goes to another free backend, or waits here, rather than in the owner's queue.
"""

from __future__ import annotations

from typing import Any

from ollabridge.backends.base import BackendHealth, Speed
from ollabridge.backends.ollama import OllamaBackend
from ollabridge.edge.context import REQUEST_ID
from ollabridge.replicas.auth import HEADER


class RemoteNodeBackend(OllamaBackend):
    """A node on replica `replica_id` (reached at `replica_url`), from that replica's presence entry."""

    #: After this replica's own nodes (0) when they are as good; before the Space's CPU (10).
    priority = 1

    def __init__(self, replica_id: str, replica_url: str, info: dict[str, Any], token: str, *,
                 connect_timeout: float = 5.0, first_token_timeout: float = 300.0,
                 idle_timeout: float = 120.0) -> None:
        self.node_id: str = info["node_id"]
        super().__init__(f"{info.get('name') or self.node_id}@{replica_id}",
                         f"{replica_url.rstrip('/')}/internal/nodes/{self.node_id}", kind="node",
                         connect_timeout=connect_timeout, first_token_timeout=first_token_timeout,
                         idle_timeout=idle_timeout, headers={HEADER: token})
        self.replica_id = replica_id
        self.replica_url = replica_url
        self.info: dict[str, Any] = {}
        self.update(info)

    def update(self, info: dict[str, Any]) -> None:
        """The owner's latest figures: models, slots, in flight there, measured speed."""
        self.info = info
        self._models = [m for m in info.get("models") or [] if isinstance(m, dict)]
        self._models_at = float("inf")  # never stale: presence refreshes it
        self.reachable = True
        self.slots = info.get("slots") or None
        for model, speed in (info.get("speed") or {}).items():
            mine = self.stats.speeds.get(model)
            if mine is None or mine.samples == 0:  # its speed as the owner measured it, until ours
                self.stats.speeds[model] = Speed(speed.get("ttft_s", 0.0), speed.get("tokens_per_s", 0.0), 0)

    def request_headers(self) -> dict[str, str] | None:
        """The caller's request id, so the owner's log line has the same one."""
        rid = REQUEST_ID.get()
        return {"X-Request-ID": rid} if rid else None

    @property
    def available(self) -> bool:
        if self.slots is None:
            return True
        mine = self.stats.in_flight
        elsewhere = max(0, int(self.info.get("in_flight") or 0) - mine)  # the owner's count includes ours
        return mine + elsewhere < self.slots

    async def fetch_models(self) -> list[dict[str, Any]]:
        return list(self._models)

    async def health(self) -> BackendHealth:
        return BackendHealth(True, f"connected to replica {self.replica_id}", self.info.get("agent"))

    async def loaded(self) -> list[dict[str, Any]]:
        return []  # the owner lists them; asking would cost a hop per /api/ps

    async def ollama_version(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "replica": self.replica_id, "node_id": self.node_id}
