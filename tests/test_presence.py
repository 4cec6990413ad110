"""Replica presence, in process: which remote nodes a replica's router holds for what the other
replicas published (ollabridge/replicas/presence.py), against a stand-in for the three Redis calls it
makes. The real Redis, processes and HAProxy are tests/test_replicas.py."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any


from ollabridge.replicas import auth
from ollabridge.replicas.presence import PREFIX, Presence
from ollabridge.replicas.remote import RemoteNodeBackend
from ollabridge.routing import Router


class FakeRedis:
    """set / scan_iter / mget / delete over a dict; `down` makes every call fail as a lost connection."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("Connection refused")

    async def set(self, key: str, value: str, px: int) -> None:
        self._check()
        self.data[key] = value

    async def scan_iter(self, match: str, count: int):
        self._check()
        for key in list(self.data):
            if key.startswith(match.rstrip("*")):
                yield key

    async def mget(self, keys: list[str]) -> list[str | None]:
        self._check()
        return [self.data.get(k) for k in keys]

    async def delete(self, key: str) -> None:
        self._check()
        self.data.pop(key, None)

    async def aclose(self) -> None:
        pass


def node(node_id: str, models: tuple[str, ...] = ("m:latest",), since: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"node_id": node_id, "name": node_id.upper(), "models": [{"name": m} for m in models], "slots": 2,
            "in_flight": 0, "connected_since": since, "speed": {}, **extra}


def publish(redis: FakeRedis, replica: str, url: str, *nodes: dict[str, Any]) -> None:
    redis.data[PREFIX + replica] = json.dumps({"id": replica, "url": url, "at": time.time(), "nodes": list(nodes)})


def presence(redis: FakeRedis, local: dict[str, Any] | None = None) -> Presence:
    router = Router()
    hub = SimpleNamespace(nodes=local or {}, on_change=None)

    def factory(replica_id: str, url: str, info: dict[str, Any], token: str) -> RemoteNodeBackend:
        return RemoteNodeBackend(replica_id, url, info, token)
    p = Presence("redis://127.0.0.1:1/0", "http://127.0.0.1:9000", hub, router, lambda: auth.replica_token("t"),
                 factory)
    p._redis = redis
    return p


def remote(p: Presence) -> dict[str, str]:
    """node id -> replica id of each remote member of the router."""
    return {b.node_id: b.replica_id for b in p.router.backends if isinstance(b, RemoteNodeBackend)}


async def test_other_replicas_nodes_join_the_router_and_leave_when_their_entry_expires():
    redis = FakeRedis()
    publish(redis, "r2", "http://r2", node("n1"), node("n2", ("other:latest",)))
    p = presence(redis)
    await p.refresh()
    assert remote(p) == {"n1": "r2", "n2": "r2"}
    assert {b.name for b in await p.router.candidates("other:latest")} == {"N2@r2"}
    assert json.loads(redis.data[PREFIX + p.id])["url"] == "http://127.0.0.1:9000"  # its own entry, published
    del redis.data[PREFIX + "r2"]  # r2 stopped refreshing: its key expired
    await p.refresh()
    assert remote(p) == {}


async def test_a_node_held_here_is_never_a_remote_member_and_a_moved_node_follows_its_latest_connection():
    redis = FakeRedis()
    publish(redis, "r2", "http://r2", node("here"), node("moved", since=1.0))
    publish(redis, "r3", "http://r3", node("moved", since=5.0))  # reconnected to r3 after r2's entry was written
    local = {"here": SimpleNamespace(info=lambda: node("here"), cached_models=lambda: [{"name": "m:latest"}])}
    p = presence(redis, local)
    await p.refresh()
    assert remote(p) == {"moved": "r3"}


async def test_a_replica_without_a_url_is_not_forwarded_to():
    redis = FakeRedis()
    publish(redis, "r2", "", node("n1"))
    p = presence(redis)
    await p.refresh()
    assert remote(p) == {} and [e["id"] for e in p.snapshot()["seen"]] == [p.id, "r2"]


async def test_redis_down_keeps_what_was_seen_and_says_so_then_catches_up():
    redis = FakeRedis()
    publish(redis, "r2", "http://r2", node("n1"))
    p = presence(redis)
    await p.refresh()
    redis.down = True
    await p.refresh()
    snap = p.snapshot()
    assert not snap["redis_connected"] and "Redis does not answer" in snap["detail"]
    assert remote(p) == {"n1": "r2"}  # serving with what it holds
    redis.down = False
    del redis.data[PREFIX + "r2"]
    await p.refresh()
    assert p.snapshot()["redis_connected"] and remote(p) == {}


async def test_remote_members_rank_after_local_nodes_and_take_the_owner_figures():
    redis = FakeRedis()
    publish(redis, "r2", "http://r2", node("n1", speed={"m:latest": {"ttft_s": 0.2, "tokens_per_s": 40.0}}))
    p = presence(redis)
    await p.refresh()
    [member] = [b for b in p.router.backends if isinstance(b, RemoteNodeBackend)]
    assert member.priority == 1 and member.slots == 2 and member.kind == "node"
    assert member.stats.speeds["m:latest"].tokens_per_s == 40.0
    publish(redis, "r2", "http://r2", node("n1", ("m:latest", "new:latest")))
    await p.refresh()
    assert member.has_model("new:latest")  # the same member, its list updated
    await asyncio.gather(*(b.close() for b in p.router.backends))


async def test_a_remote_node_full_with_its_owners_requests_is_not_free_here():
    redis = FakeRedis()
    publish(redis, "r2", "http://r2", node("n1", in_flight=2))  # 2 slots, both taken on r2
    p = presence(redis)
    await p.refresh()
    [member] = [b for b in p.router.backends if isinstance(b, RemoteNodeBackend)]
    assert not member.available
    publish(redis, "r2", "http://r2", node("n1", in_flight=1))
    await p.refresh()
    assert member.available
    member.stats.in_flight = 1  # ours, and r2 reported just that one: one slot left
    assert member.available
    member.stats.in_flight = 2
    assert not member.available
    await asyncio.gather(*(b.close() for b in p.router.backends))


def test_the_replica_credential_is_an_hmac_checked_in_constant_time():
    token = auth.replica_token("admin")
    assert token != "admin" and len(token) == 64
    assert auth.valid(token, "admin")
    assert not auth.valid(token, "other") and not auth.valid("", "admin") and not auth.valid(token, "")


async def test_the_status_tab_lists_other_replicas_nodes_as_online():
    from ollabridge.ui.status import node_rows

    redis = FakeRedis()
    publish(redis, "r2", "http://r2", node("n1", in_flight=1, gpu="T4"))
    p = presence(redis)
    await p.refresh()
    gateway = SimpleNamespace(pairing=SimpleNamespace(nodes=lambda: [{"node_id": "n1", "name": "N1"}]))
    [row] = node_rows(gateway, p.remote_nodes())
    assert row[0] == "N1" and row[1] == "● online" and row[3] == "m:latest" and row[4] == "1 / 2"
    await asyncio.gather(*(b.close() for b in p.router.backends))
