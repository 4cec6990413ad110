"""The shared state on a real Redis (ollabridge/store/redis.py), in process, as two replicas would use
it: keys minted and revoked on one seen on the other within a second, one rate budget and one
wrong-secret ledger over both, Redis restarted (nothing lost, events heard again), Redis down (what
is held keeps working, and health says so)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from harness.redis import RedisServer
from ollabridge.edge.guesses import Guesses, TooManyGuesses
from ollabridge.edge.keys import ApiKeys
from ollabridge.edge.ratelimit import RateLimiter
from ollabridge.pairing import PairingService
from ollabridge.store import open_state
from ollabridge.store.base import StateUnavailable
from ollabridge.store.redis import RedisState
from tests.procs import free_port, wait_until

ADMIN = "s3cret-admin"


@pytest.fixture
def server(tmp_path: Path):
    """A Redis of this test's own (these tests stop and restart it)."""
    with RedisServer(tmp_path / "redis") as srv:
        yield srv


@pytest.fixture
def replicas(server: RedisServer):
    states = [RedisState(server.url), RedisState(server.url)]
    yield states
    for state in states:
        state.close()


def keys_on(state: RedisState, tmp_path: Path) -> ApiKeys:
    keys = ApiKeys(tmp_path, [], is_admin=lambda token: token == ADMIN, state=state)
    keys.open()
    return keys


def test_open_state_picks_redis_only_with_a_url(tmp_path: Path, server: RedisServer) -> None:
    local = open_state(tmp_path)
    shared = open_state(tmp_path, server.url)
    try:
        assert local.health() == {"redis": None} and local.budget is None
        assert shared.health()["redis"] == {"url": server.url, "connected": True, "detail": "ok"}
    finally:
        local.close()
        shared.close()


def test_a_key_minted_on_one_replica_works_on_the_other_at_once_and_a_revoke_within_a_second(
        tmp_path: Path, replicas: list[RedisState]) -> None:
    a, b = keys_on(replicas[0], tmp_path), keys_on(replicas[1], tmp_path)
    minted = a.mint("app", rpm=5, weight=2)
    got = b.check(minted["key"])  # at once: looked up when not yet in b's memory
    assert (got.name, got.rpm, got.weight) == ("app", 5, 2) and b.enabled
    assert [k["id"] for k in b.list()] == [minted["id"]]
    raw = repr([replicas[0].sync.dump(k) for k in replicas[0].sync.scan_iter()])
    assert minted["key"] not in raw  # only its hash is stored
    a.revoke(minted["id"])
    wait_until(lambda: b.check(minted["key"]) is None, 1.0, "the revoked key refused on replica b")
    assert not b.enabled


async def test_one_rate_budget_over_both_replicas(replicas: list[RedisState]) -> None:
    a, b = RateLimiter(shared=replicas[0].budget), RateLimiter(shared=replicas[1].budget)
    started = time.monotonic()
    allowed = 0
    for i in range(120):
        allowed += (await (a if i % 2 else b).spend("key:k", 60)) == 0
    elapsed = time.monotonic() - started
    # 60 at once, then one a second: over both, not 60 each (GCRA on Redis' clock).
    assert 60 <= allowed <= 60 + int(elapsed) + 1
    assert await a.spend("key:other", 60) == 0 and await a.spend("key:k", 0) == 0


def test_wrong_secrets_on_one_replica_lock_the_address_out_on_the_other(replicas: list[RedisState]) -> None:
    a = Guesses(limit=4, lockout=60, shared=replicas[0].ledger)
    b = Guesses(limit=4, lockout=60, shared=replicas[1].ledger)
    assert [(a if i % 2 else b).guard("9.9.9.9", False) for i in range(4)] == [False] * 4  # 2 here, 2 there
    with pytest.raises(TooManyGuesses):
        a.guard("9.9.9.9", True)

    def b_refuses_the_right_one() -> bool:
        try:
            b.guard("9.9.9.9", True)
        except TooManyGuesses as exc:
            return int(exc.headers["Retry-After"]) > 50
        return False
    wait_until(b_refuses_the_right_one, 1.0, "the lock-out on replica b")
    assert b.guard("8.8.8.8", True)  # another address
    replicas.append(RedisState(replicas[0].url))  # a replica started after the lock-out refuses it too
    with pytest.raises(TooManyGuesses):
        Guesses(limit=4, lockout=60, shared=replicas[-1].ledger).guard("9.9.9.9", True)


def test_a_node_revoked_on_one_replica_is_kicked_by_the_one_holding_it(tmp_path: Path,
                                                                       replicas: list[RedisState]) -> None:
    kicked: list[str] = []
    holder = PairingService(tmp_path, ADMIN, interval=0, state=replicas[0])
    holder.on_revoke.append(kicked.append)
    holder.open()
    other = PairingService(tmp_path, ADMIN, interval=0, state=replicas[1])
    flow = holder.start("gpu")
    other.approve(flow["user_code"], ADMIN)
    cred = holder.poll(flow["device_code"])
    other.revoke(cred["node_id"], ADMIN)
    wait_until(lambda: kicked == [cred["node_id"]], 1.0, "the kick on the replica holding the node")


def test_redis_restarted_loses_nothing_and_events_flow_again(tmp_path: Path, server: RedisServer,
                                                            replicas: list[RedisState]) -> None:
    a, b = keys_on(replicas[0], tmp_path), keys_on(replicas[1], tmp_path)
    first, second = a.mint("first"), a.mint("second")
    wait_until(lambda: b.check(second["key"]), 1.0, "the keys on replica b")
    server.restart()  # SIGTERM and start again: the append-only file is replayed
    assert [k["name"] for k in ApiKeys(tmp_path, [], lambda t: False, state=RedisState(server.url)).list()] == \
        ["first", "second"]
    wait_until(lambda: all(s.connected for s in replicas), 5.0, "both replicas reconnected")
    wait_until(lambda: _revoked(a, first["id"]), 5.0, "a revoke after the restart")
    wait_until(lambda: b.check(first["key"]) is None, 1.0, "the revoke heard on replica b after the restart")
    assert b.check(second["key"]) is not None


def _revoked(keys: ApiKeys, key_id: str) -> bool:
    try:
        return keys.revoke(key_id)["revoked"]
    except StateUnavailable:
        return False


async def test_redis_down_keeps_what_is_held_and_says_so(tmp_path: Path, server: RedisServer,
                                                         replicas: list[RedisState]) -> None:
    state = replicas[0]
    keys = keys_on(state, tmp_path)
    minted = keys.mint("app")
    pairing = PairingService(tmp_path, ADMIN, interval=0, state=state)
    flow = pairing.start("gpu")
    pairing.approve(flow["user_code"], ADMIN)
    cred = pairing.poll(flow["device_code"])
    pairing.authenticate(cred["node_token"])  # seen while Redis is up
    limiter = RateLimiter(shared=state.budget)
    server.stop()
    wait_until(lambda: not state.connected, 3.0, "Redis noticed down")
    health = state.health()["redis"]
    assert health["connected"] is False and health["detail"] != "ok"
    assert keys.check(minted["key"]).name == "app"  # the keys held keep working
    assert pairing.authenticate(cred["node_token"])["node_id"] == cred["node_id"]  # so do nodes seen
    assert [await limiter.spend("key:k", 2) for _ in range(3)][:2] == [0, 0]  # the local bucket
    started = time.monotonic()
    with pytest.raises(StateUnavailable):
        keys.mint("during the outage")
    assert time.monotonic() - started < 0.1  # refused at once, not after a timeout
    server.start()
    wait_until(lambda: state.connected, 5.0, "Redis noticed back")
    assert keys.mint("after")["name"] == "after"


def test_a_replica_starting_while_redis_is_down_starts_with_the_api_and_admin_closed(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    state = RedisState(url)
    try:
        keys = ApiKeys(tmp_path, [], is_admin=lambda token: False, state=state)
        keys.open()
        assert keys.enabled and keys.check("obk_anything") is None  # not open by accident
        pairing = PairingService(tmp_path, state=state)  # no OLLABRIDGE_ADMIN_TOKEN: it lives in Redis
        pairing.open()
        assert pairing.admin_token == "" and not pairing.is_admin("")
        with pytest.raises(StateUnavailable):
            pairing.start("gpu")
    finally:
        state.close()
