"""Three gateway processes sharing one real redis-server (OLLABRIDGE_REDIS_URL): a key minted on one
works on the others and a revoke is refused everywhere within a second, a node paired across replicas
(started on A, approved on B, token polled on A), revoked on B while its socket is on A and closed
within a second, 60 requests a minute in total over two replicas, Redis restarted (nothing lost, the
replicas reconnect by themselves) and Redis down (known keys still answer; /health says degraded)."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from harness.redis import RedisServer
from tests.procs import wait_until
from tests.relay_support import AUTH, RawNode, fake_ollama, gateway


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, out_dir: Path):
    """(redis, [three gateway urls]): each replica with its own data dir, all on one Redis."""
    tmp = tmp_path_factory.mktemp("replicas")
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp / "redis"))
        ollama = stack.enter_context(fake_ollama(out_dir, "m:1b"))
        urls = [stack.enter_context(gateway(out_dir, tmp / f"replica-{i}", ollama,
                                            OLLABRIDGE_REDIS_URL=redis.url, OLLABRIDGE_API_KEYS="sk-env",
                                            OLLABRIDGE_FORWARDED_HOPS="1"))
                for i in range(3)]  # (a key from the environment keeps the API closed when none is minted)
        yield redis, urls


def models(gw: str, key: str) -> int:
    return httpx.get(f"{gw}/ollama/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code


def mint(gw: str, **body) -> dict:
    answer = httpx.post(f"{gw}/admin/keys", json={"name": "app", **body}, headers=AUTH, timeout=5)
    answer.raise_for_status()
    return answer.json()


def within(seconds: float, check, what: str) -> float:
    """Poll `check` until true (another process's state: no event to await); the seconds it took."""
    started = time.monotonic()
    wait_until(check, seconds, what, interval=0.01)
    return time.monotonic() - started


def test_a_key_minted_on_one_replica_works_on_all_and_a_revoke_holds_everywhere_within_a_second(cluster) -> None:
    _, (a, b, c) = cluster
    key = mint(a)
    assert models(b, key["key"]) == 200 and models(c, key["key"]) == 200  # at once, not after its event
    assert models(b, "obk_wrong") == 401
    httpx.delete(f"{b}/admin/keys/{key['id']}", headers=AUTH, timeout=5).raise_for_status()
    within(1.0, lambda: models(a, key["key"]) == 401 and models(c, key["key"]) == 401, "the revoke on a and c")


def test_a_node_paired_across_replicas_is_closed_on_its_replica_when_revoked_on_another(cluster) -> None:
    _, (a, b, _c) = cluster
    flow = httpx.post(f"{a}/device/start", json={"name": "gpu-x"}, timeout=5).json()
    lookup = httpx.get(f"{b}/device/lookup", params={"user_code": flow["user_code"]}, headers=AUTH, timeout=5)
    assert lookup.json()["name"] == "gpu-x"
    httpx.post(f"{b}/device/approve", json={"user_code": flow["user_code"]}, headers=AUTH, timeout=5).raise_for_status()
    token = httpx.post(f"{a}/device/token", json={"device_code": flow["device_code"]}, timeout=5)
    assert token.status_code == 200, token.text
    cred = token.json()
    with RawNode(a, cred["node_token"], name="gpu-x") as node:
        assert node.welcome["node_id"] == cred["node_id"]
        gone = httpx.delete(f"{b}/device/nodes/{cred['node_id']}", headers=AUTH, timeout=5)
        gone.raise_for_status()
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                node.recv("never", timeout=1.0)
        assert time.monotonic() - started < 1.0 and closed.value.rcvd.code == 4403
    again = httpx.post(f"{a}/device/token", json={"device_code": flow["device_code"]}, timeout=5)
    assert again.json()["error"] == "invalid_grant"  # delivered once


def test_sixty_requests_a_minute_in_total_over_two_replicas(cluster) -> None:
    _, (a, b, _c) = cluster
    key = mint(a, rpm=60)["key"]
    within(1.0, lambda: models(b, key) == 200, "the key on b")  # (one request spent)
    started = time.monotonic()
    answers = {a: [], b: []}
    with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {key}"}) as client:
        for i in range(120):
            gw = a if i % 2 else b
            answers[gw].append(client.get(f"{gw}/ollama/v1/models").status_code)
    elapsed = time.monotonic() - started
    ok = sum(codes.count(200) for codes in answers.values()) + 1
    assert {code for codes in answers.values() for code in codes} == {200, 429}
    assert 60 <= ok <= 60 + int(elapsed) + 1, (ok, elapsed)  # a replica alone would let 60 through
    assert all(codes.count(200) >= 20 for codes in answers.values())


def test_wrong_admin_tokens_on_two_replicas_lock_the_address_out_on_the_third(cluster) -> None:
    _, (a, b, c) = cluster
    guesser = {"X-Forwarded-For": "203.0.113.9"}  # (OLLABRIDGE_FORWARDED_HOPS=1: the address it names)
    wrong = {**guesser, "Authorization": "Bearer not-the-admin-token"}
    codes = [httpx.get(f"{gw}/admin/keys", headers=wrong, timeout=5).status_code for gw in [a, b] * 5]
    assert codes == [401] * 10  # OLLABRIDGE_GUESS_LIMIT: 10 a minute, counted over the replicas
    right = {**guesser, **AUTH}
    within(1.0, lambda: httpx.get(f"{c}/admin/keys", headers=right, timeout=5).status_code == 429,
           "the lock-out on c, the right token refused too")
    assert httpx.get(f"{c}/admin/keys", headers=AUTH, timeout=5).status_code == 200  # another address


def test_redis_restarted_keeps_every_key_and_the_replicas_reconnect(cluster) -> None:
    redis, (a, b, c) = cluster
    key = mint(a)
    within(1.0, lambda: models(c, key["key"]) == 200, "the key on c")
    redis.restart()
    connected = lambda gw: httpx.get(f"{gw}/health", timeout=5).json()["shared_state"]["redis"]["connected"]
    within(5.0, lambda: all(connected(gw) for gw in (a, b, c)), "all replicas reconnected")
    assert any(k["id"] == key["id"] for k in httpx.get(f"{b}/admin/keys", headers=AUTH, timeout=5).json()["keys"])
    httpx.delete(f"{b}/admin/keys/{key['id']}", headers=AUTH, timeout=5).raise_for_status()
    within(1.0, lambda: models(a, key["key"]) == 401 and models(c, key["key"]) == 401,
           "a revoke after the restart, on a and c")


def test_redis_down_the_replicas_serve_known_keys_and_say_so(cluster) -> None:
    redis, (a, b, _c) = cluster
    key = mint(a)
    within(1.0, lambda: models(b, key["key"]) == 200, "the key on b")
    redis.stop()
    try:
        health = lambda: httpx.get(f"{a}/health", timeout=5).json()
        within(3.0, lambda: health()["shared_state"]["redis"]["connected"] is False, "a notices Redis down")
        shown = health()
        assert shown["status"] == "degraded" and shown["shared_state"]["redis"]["detail"]
        assert models(a, key["key"]) == 200 and models(b, key["key"]) == 200  # what they hold keeps serving
        refused = httpx.post(f"{a}/admin/keys", json={"name": "x"}, headers=AUTH, timeout=5)
        assert refused.status_code == 503 and "shared state is unreachable" in refused.json()["error"]
    finally:
        redis.start()
    within(5.0, lambda: httpx.get(f"{a}/health", timeout=5).json()["shared_state"]["redis"]["connected"],
           "a reconnected")
