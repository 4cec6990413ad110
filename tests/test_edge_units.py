"""The edge's pieces in process: the rate limiter's arithmetic, the key store (same database as the
paired nodes), the `goaway` capability, client addresses behind proxies, metrics text, the guard
against guessed secrets."""

from __future__ import annotations

import json

import pytest

from ollabridge.edge.guesses import Guesses, TooManyGuesses
from ollabridge.edge.middleware import EdgeMiddleware
from ollabridge.config import Settings
from ollabridge.gateway import Gateway
from ollabridge.edge.keys import ApiKeys
from ollabridge.edge.metrics import Metrics
from ollabridge.store.local import NodeStore
from ollabridge.edge.ratelimit import RateLimiter
from ollabridge.relay import protocol as p


def test_token_bucket_allows_a_minute_then_one_per_refill():
    limiter = RateLimiter()
    assert [limiter.take("ip:a", 3, now=100.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("ip:a", 3, now=100.0) == 20  # one token every 20 s
    assert limiter.take("ip:b", 3, now=100.0) == 0  # another identity, its own bucket
    assert limiter.take("ip:a", 3, now=121.0) == 0
    assert limiter.take("ip:a", 0, now=121.0) == 0  # 0: no limit


def test_in_flight_limit_and_pruning():
    limiter = RateLimiter(max_identities=2)
    assert limiter.enter("k", 2) and limiter.enter("k", 2) and not limiter.enter("k", 2)
    limiter.leave("k")
    assert limiter.enter("k", 2)
    limiter.take("x", 10, now=1e9)  # full: the least recently seen idle identity goes, busy ones stay
    assert len(limiter) <= 2 and limiter.enter("k", 4)
    limiter.take("y", 10, now=1e9 + 1)
    assert len(limiter) <= 2 and limiter.enter("k", 5)


def test_keys_share_the_pairing_database_and_are_hashed(tmp_path):
    nodes = NodeStore(tmp_path / "ollabridge.db")
    nodes.add("node_1", "n", "obn_secret")
    keys = ApiKeys(tmp_path, ["sk-env"], is_admin=lambda token: token == "admin")
    keys.open()
    assert keys.enabled and keys.check("sk-env").source == "env" and keys.check("nope") is None
    minted = keys.mint("app", rpm=5)
    assert keys.check(minted["key"]).rpm == 5
    keys.close()
    again = ApiKeys(tmp_path, [], is_admin=lambda token: False)
    again.open()
    assert again.check(minted["key"]).name == "app"  # survives a restart
    assert again.revoke(minted["id"])["api_open"] is True and not again.enabled
    raw = (tmp_path / "ollabridge.db").read_bytes()
    assert minted["key"].encode() not in raw and nodes.get("node_1")["name"] == "n"


def test_admin_token_is_never_a_key(tmp_path):
    keys = ApiKeys(tmp_path, ["admin", "sk-1"], is_admin=lambda token: token == "admin")
    keys.open()
    assert keys.check("admin") is None
    keys.drop_admin_token("admin")
    assert [k["id"] for k in keys.list()] == [keys.check("sk-1").id]


def test_goaway_is_only_for_agents_that_say_they_understand_it():
    hello = {"type": "hello", "protocol": 1, "models": [], "capabilities": {"slots": 1, "goaway": True}}
    assert p.check_hello(p.parse(json.dumps(hello))).goaway is True
    hello["capabilities"] = {"slots": 1}
    assert p.check_hello(p.parse(json.dumps(hello))).goaway is False
    assert p.check_cloud_frame(p.parse(json.dumps({"type": "goaway", "drain_s": 8}), allowed=p.CLOUD_TYPES))


def test_client_address_trusts_only_the_configured_hops(tmp_path):
    def edge(hops: int) -> EdgeMiddleware:
        return EdgeMiddleware(None, Gateway(Settings(OLLABRIDGE_DATA_DIR=str(tmp_path), OLLABRIDGE_UI="0",
                                                     OLLABRIDGE_FORWARDED_HOPS=str(hops))))
    scope = {"client": ("10.0.0.1", 1)}
    assert edge(0).client_address(scope, "1.1.1.1") == "10.0.0.1"
    assert edge(1).client_address(scope, "6.6.6.6, 1.1.1.1") == "1.1.1.1"
    assert edge(2).client_address(scope, "6.6.6.6, 1.1.1.1, 2.2.2.2") == "1.1.1.1"
    assert edge(2).client_address(scope, "1.1.1.1") == "1.1.1.1"
    assert edge(1).client_address(scope, None) == "10.0.0.1"


def test_metrics_text_without_a_gateway():
    metrics = Metrics()
    metrics.record("/v1/chat/completions", "POST", 200, "gpu", "node", 0.3, 0.05, 10, 20)
    metrics.limited("ip", "rpm")
    text = metrics.render().decode()
    assert 'ollabridge_requests_total{backend="gpu",method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'ollabridge_time_to_first_token_seconds_bucket{backend="gpu",le="0.05",route="/v1/chat/completions"} 1.0' in text
    assert 'ollabridge_tokens_total{backend="gpu",kind="node",type="completion"} 20.0' in text
    assert 'ollabridge_rate_limited_total{limit="rpm",scope="ip"} 1.0' in text


def test_wrong_secrets_lock_an_address_out_for_longer_each_time():
    guesses = Guesses(limit=3, lockout=60)
    assert guesses.guard("a", True, now=0) is True
    assert [guesses.guard("a", False, now=t) for t in (1, 2, 3)] == [False] * 3
    for right in (True, False):  # locked: whatever it sends
        with pytest.raises(TooManyGuesses) as locked:
            guesses.guard("a", right, now=4)
        assert locked.value.status == 429 and locked.value.headers["Retry-After"] == "59"
    assert guesses.guard("b", True, now=4) and not guesses.guard("b", False, now=4)  # another address
    assert guesses.guard("a", True, now=63) is True  # over
    for t in (64, 65, 66):
        guesses.guard("a", False, now=t)
    with pytest.raises(TooManyGuesses) as again:
        guesses.guard("a", True, now=66)
    assert again.value.headers["Retry-After"] == "120"  # twice as long
    # Wrong tries spread over more than a minute never lock; an hour after its last lock-out an
    # address starts afresh.
    assert [guesses.guard("c", False, now=t) for t in (0, 40, 80, 120, 160)] == [False] * 5
    for t in (186 + 3600 + 1, 186 + 3600 + 2, 186 + 3600 + 3):
        guesses.guard("a", False, now=t)
    with pytest.raises(TooManyGuesses) as fresh:
        guesses.guard("a", True, now=186 + 3600 + 3)
    assert fresh.value.headers["Retry-After"] == "60"
    off = Guesses(limit=0)
    assert [off.guard("a", False) for _ in range(100)] == [False] * 100 and len(off) == 0


def test_guessing_addresses_are_bounded():
    guesses = Guesses(limit=3, max_addresses=100)
    for i in range(1000):
        guesses.guard(f"10.0.{i // 256}.{i % 256}", False, now=float(i))
    assert len(guesses) <= 100


def test_a_minted_key_carries_a_weight_also_in_a_database_from_before_weights(tmp_path):
    import sqlite3
    old = sqlite3.connect(tmp_path / "ollabridge.db")  # the table as it was, without `weight`
    old.execute("CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL "
                "UNIQUE, prefix TEXT NOT NULL, created REAL NOT NULL, revoked REAL, rpm INTEGER, streams INTEGER)")
    old.close()
    keys = ApiKeys(tmp_path, [], is_admin=lambda token: False)
    keys.open()
    heavy, plain = keys.mint("batch", weight=3), keys.mint("app")
    assert (heavy["weight"], plain["weight"]) == (3, 1.0)
    keys.close()
    again = ApiKeys(tmp_path, [], is_admin=lambda token: False)
    again.open()
    assert again.check(heavy["key"]).weight == 3 and again.check(plain["key"]).weight == 1.0
    assert {k["name"]: k["weight"] for k in again.list()} == {"batch": 3, "app": 1.0}


def test_track_names_the_caller_and_its_weight_to_the_router():
    from types import SimpleNamespace

    from ollabridge.edge.context import RequestContext, track
    ctx = RequestContext("r1", "POST", "/v1/chat/completions", 0.0)
    ctx.ident, ctx.weight = "key:key_1", 3.0
    served = track(SimpleNamespace(scope={"ollabridge": ctx}), "a")
    assert served is ctx.served and served == {"caller": "key:key_1", "weight": 3.0} and ctx.model == "a"
