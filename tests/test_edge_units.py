"""The edge's pieces in process: the rate limiter's arithmetic, the key store (same database as the
paired nodes), the `goaway` capability, client addresses behind proxies, metrics text."""

from __future__ import annotations

import json

from ollabridge.edge.middleware import EdgeMiddleware
from ollabridge.config import Settings
from ollabridge.gateway import Gateway
from ollabridge.edge.keys import ApiKeys
from ollabridge.edge.metrics import Metrics
from ollabridge.pairing.store import NodeStore
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
