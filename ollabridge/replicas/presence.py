"""Node presence across replicas: who holds which GPU node, through Redis.

Every `INTERVAL` seconds, and at once when a node joins, leaves or changes its models, a replica
writes `ollabridge:replica:<id>` = {id, url, at, nodes: [each node's id, name, models, slots, in
flight, measured speed]} with a `TTL`-second expiry, then reads every other replica's key and makes
the router's remote members match them: a `RemoteNodeBackend` per node held elsewhere (but for nodes
this replica holds itself: a node that moved here is served here). A replica that dies stops
refreshing its key, so within `TTL` seconds the others stop sending it anything.

When Redis does not answer, the replica goes on with what it last saw (its own nodes, and the
remote ones, whose requests fail over if their replica is gone too) and `/health` says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from ollabridge.status import redact

log = logging.getLogger("ollabridge.replicas")

PREFIX = "ollabridge:replica:"
INTERVAL = 0.5  # seconds between refreshes
TTL = 3.0  # seconds a replica's entry outlives its last refresh


class Presence:
    def __init__(self, redis_url: str, replica_url: str, hub: Any, router: Any, token: Any,
                 backend_factory: Any) -> None:
        """`token()`: the replica credential now; `backend_factory(replica_id, url, info, token)`:
        a RemoteNodeBackend."""
        self.redis_url = redis_url
        self.url = replica_url.rstrip("/")
        self.id = os.urandom(4).hex()
        self.hub = hub
        self.router = router
        self.token = token
        self.factory = backend_factory
        self.remote: dict[tuple[str, str], Any] = {}  # (replica id, node id) -> RemoteNodeBackend
        self.seen: list[dict[str, Any]] = []  # the replicas' entries at the last read, this one's first
        self.connected = False
        self.detail = "not started"
        self._redis: Any = None
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.hub.on_change = self.poke
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="replica-presence")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.wait_for(self._redis.delete(PREFIX + self.id), 1.0)  # gone now, not in TTL s
        except Exception:  # noqa: BLE001 - Redis may be down; the key expires anyway
            pass
        for backend in self.remote.values():
            self.router.remove(backend)
            await backend.close()
        self.remote.clear()
        await self._redis.aclose()

    def poke(self) -> None:
        """A local node joined, left or changed: publish now."""
        self._poke.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), INTERVAL)
            except TimeoutError:
                pass
            self._poke.clear()
            await self.refresh()

    # -- one round -------------------------------------------------------------------------------
    def entry(self) -> dict[str, Any]:
        nodes = [{**node.info(), "models": node.cached_models()} for node in list(self.hub.nodes.values())]
        return {"id": self.id, "url": self.url, "at": time.time(), "nodes": nodes}

    async def refresh(self) -> None:
        """Publish this replica's nodes, read the others', and join theirs to the router."""
        mine = self.entry()
        try:
            await self._redis.set(PREFIX + self.id, json.dumps(mine), px=int(TTL * 1000))
            keys = [key async for key in self._redis.scan_iter(match=PREFIX + "*", count=1000)]
            raw = await self._redis.mget(keys) if keys else []
        except Exception as exc:  # noqa: BLE001 - any Redis failure: go on with what we hold
            if self.connected or self.detail == "not started":
                log.warning("replica presence: Redis at %s does not answer (%s); serving with what this "
                            "replica holds", redact(self.redis_url), exc)
            self.connected, self.detail = False, f"Redis does not answer: {type(exc).__name__}: {exc}"
            self.seen = [mine, *[e for e in self.seen if e.get("id") != self.id]]
            return
        if not self.connected:
            log.info("replica presence: Redis at %s answers; replica %s at %s", redact(self.redis_url),
                     self.id, self.url or "(no OLLABRIDGE_REPLICA_URL: not reachable by the others)")
        self.connected, self.detail = True, "ok"
        others = []
        for value in raw:
            try:
                entry = json.loads(value) if value else None
            except ValueError:
                entry = None
            if isinstance(entry, dict) and entry.get("id") != self.id:
                others.append(entry)
        self.seen = [mine, *sorted(others, key=lambda e: str(e.get("url")))]
        self._reconcile(others)

    def _reconcile(self, others: list[dict[str, Any]]) -> None:
        """Make the router's remote members the nodes the other replicas hold (one entry per node:
        the latest connection wins while a node moves), but for those held here."""
        wanted: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        for replica in others:
            if not replica.get("url"):
                continue  # a replica the others cannot reach serves only its own callers
            for node in replica.get("nodes") or []:
                node_id = node.get("node_id")
                if not node_id or node_id in self.hub.nodes:
                    continue
                held = wanted.get(node_id)
                if held is None or (node.get("connected_since") or 0) > (held[1].get("connected_since") or 0):
                    wanted[node_id] = (replica, node)
        changed = False
        keep = {(r["id"], n["node_id"]) for r, n in wanted.values()}
        for key in [k for k in self.remote if k not in keep]:
            backend = self.remote.pop(key)
            self.router.remove(backend)
            asyncio.get_running_loop().create_task(backend.close())
            changed = True
        for replica, node in wanted.values():
            key = (replica["id"], node["node_id"])
            backend = self.remote.get(key)
            if backend is None:
                backend = self.factory(replica["id"], replica["url"], node, self.token())
                self.remote[key] = backend
                self.router.add(backend)
                changed = True
            else:
                # New models, or slots freed or taken there: waiters here look again.
                changed |= (backend.cached_models() != node.get("models")
                            or backend.info.get("in_flight") != node.get("in_flight"))
                backend.update(node)
        if changed:
            self.router.notify()

    # -- what /health shows ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        return {"id": self.id, "url": self.url, "redis_connected": self.connected, "detail": self.detail,
                "seen": [{"id": e.get("id"), "url": e.get("url"), "age_s": round(max(0.0, now - (e.get("at") or now)), 1),
                          "nodes": [{k: n.get(k) for k in ("node_id", "name", "slots", "in_flight")}
                                    | {"models": [m.get("name") for m in n.get("models") or []]}
                                    for n in e.get("nodes") or []]}
                         for e in self.seen]}

    def remote_nodes(self) -> list[dict[str, Any]]:
        """The other replicas' nodes, as the Status tab lists nodes (with the replica that holds each)."""
        return [{**b.info, "models": [m.get("name") for m in b.cached_models()], "connected": True,
                 "replica": b.replica_id} for b in self.remote.values()]

