"""The pairing service in process: the device flow's rules, the admin token, the store; each test on
both implementations of the shared state (SQLite and memory; a real Redis) where it applies."""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

import pytest

from ollabridge.pairing import (AdminRequired, CodeExpired, CodeNotFound, CodeUsed, DeviceFlowError,
                                NodeAuthError, NodeNotFound, PairingService, RateLimited)

ADMIN = "s3cret-admin"
CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")


@pytest.fixture
def svc(tmp_path: Path, make_state) -> PairingService:
    service = PairingService(tmp_path, ADMIN, "https://me.hf.space", interval=0.05, state=make_state())
    service.open()
    yield service
    service.close()


def _error(fn) -> str:
    with pytest.raises(DeviceFlowError) as info:
        fn()
    return info.value.error


def test_start_answers_rfc8628_fields(svc: PairingService) -> None:
    flow = svc.start("colab-t4", client="1.2.3.4", offers={"models": [{"name": "m:7b"}],
                                                          "capabilities": {"gpu": "T4", "vram_mb": 15360}})
    assert CODE.match(flow["user_code"])
    assert len(flow["device_code"]) >= 43  # 32 random bytes, url-safe base64: 256 bits
    assert flow["expires_in"] == 600 and flow["interval"] == 0.05
    assert flow["verification_uri"] == "https://me.hf.space/"
    assert flow["verification_uri_complete"] == f"https://me.hf.space/?user_code={flow['user_code']}"
    info = svc.lookup(flow["user_code"].lower().replace("-", ""))
    assert info["name"] == "colab-t4" and info["models"] == ["m:7b"] and info["gpu"] == "T4"
    assert info["status"] == "pending" and [p["user_code"] for p in svc.pending()] == [flow["user_code"]]


def test_full_flow_token_once_and_hashed(svc: PairingService, tmp_path: Path, make_state) -> None:
    flow = svc.start("node-a")
    assert _error(lambda: svc.poll(flow["device_code"])) == "authorization_pending"
    assert _error(lambda: svc.poll(flow["device_code"])) == "slow_down"  # polled at once again
    with pytest.raises(AdminRequired, match="required"):
        svc.approve(flow["user_code"], None)
    with pytest.raises(AdminRequired, match="wrong"):
        svc.approve(flow["user_code"], "guess")
    approved = svc.approve(" " + flow["user_code"].lower() + " ", ADMIN)
    with pytest.raises(CodeUsed, match="already approved"):
        svc.approve(flow["user_code"], ADMIN)
    token = svc.poll(flow["device_code"], base_url="http://ignored")
    assert token["node_id"] == approved["node_id"] and token["node_token"].startswith("obn_")
    assert token["relay_url"] == "wss://me.hf.space/relay/connect"
    assert _error(lambda: svc.poll(flow["device_code"])) == "invalid_grant"  # exactly once
    assert svc.authenticate(token["node_token"])["node_id"] == approved["node_id"]
    assert token["node_token"].encode() not in stored_bytes(make_state, tmp_path)  # only its hash is stored
    assert [n["name"] for n in svc.nodes()] == ["node-a"]
    assert svc.nodes()[0]["connected"] is False


def test_deny_and_bad_codes(svc: PairingService) -> None:
    flow = svc.start("intruder")
    assert svc.deny(flow["user_code"], ADMIN)["denied"] is True
    # A denial is told at once, however fast the device polls (never slow_down instead).
    assert _error(lambda: svc.poll(flow["device_code"])) == "access_denied"
    assert _error(lambda: svc.poll(flow["device_code"])) == "access_denied"
    with pytest.raises(CodeUsed, match="was denied"):
        svc.lookup(flow["user_code"])
    with pytest.raises(CodeNotFound, match="not a pairing code"):
        svc.approve("hello", ADMIN)
    with pytest.raises(CodeNotFound, match="No device is waiting"):
        svc.approve("BBBB-BBBB", ADMIN)
    assert _error(lambda: svc.poll("forged")) == "invalid_grant"


def stored_bytes(make_state, tmp_path: Path) -> bytes:
    """Everything the shared state wrote: the SQLite files, or every value in Redis."""
    if make_state.kind == "sqlite":
        return b"".join(f.read_bytes() for f in tmp_path.glob("ollabridge.db*"))
    client = make_state().sync
    return repr([(k, client.dump(k)) for k in client.scan_iter()]).encode()


def test_expired_codes(tmp_path: Path, make_state) -> None:
    svc = PairingService(tmp_path, ADMIN, expires_in=0, state=make_state())
    flow = svc.start("late")
    assert _error(lambda: svc.poll(flow["device_code"])) == "expired_token"
    with pytest.raises(CodeExpired, match="expired"):
        svc.approve(flow["user_code"], ADMIN)
    with pytest.raises(CodeExpired):
        svc.lookup(flow["user_code"])


def test_rate_limit_per_address_and_pending_cap(tmp_path: Path, make_state) -> None:
    svc = PairingService(tmp_path, ADMIN, starts_per_minute=3, max_pending=5, state=make_state())
    for _ in range(3):
        svc.start(client="10.0.0.1")
    with pytest.raises(RateLimited) as info:
        svc.start(client="10.0.0.1")
    assert int(info.value.headers["Retry-After"]) > 0 and info.value.status == 429
    svc.start(client="10.0.0.2")
    svc.start(client="10.0.0.3")
    with pytest.raises(RateLimited, match="Too many pairing codes"):
        svc.start(client="10.0.0.4")


def test_revoke_and_restart(tmp_path: Path, make_state) -> None:
    svc = PairingService(tmp_path, ADMIN, interval=0, state=make_state())
    flow = svc.start("gpu")
    svc.approve(flow["user_code"], ADMIN)
    cred = svc.poll(flow["device_code"])
    svc.close()
    again = PairingService(tmp_path, ADMIN, state=make_state())  # a restart: the pairing is still there
    assert again.authenticate(cred["node_token"])["name"] == "gpu"
    with pytest.raises(NodeAuthError) as bad:
        again.authenticate("obn_forged")
    assert bad.value.close_code == 4401
    with pytest.raises(AdminRequired):
        again.revoke(cred["node_id"], "nope")
    assert again.revoke(cred["node_id"], ADMIN)["revoked"] is True
    with pytest.raises(NodeAuthError) as revoked:
        again.authenticate(cred["node_token"])
    assert revoked.value.close_code == 4403
    with pytest.raises(NodeNotFound):
        again.revoke(cred["node_id"], ADMIN)
    assert again.nodes() == []
    if make_state.kind == "sqlite":
        assert stat.S_IMODE((tmp_path / "ollabridge.db").stat().st_mode) == 0o600


def test_generated_admin_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ollabridge.pairing")
    first = PairingService(tmp_path)
    first.open()
    path = tmp_path / "admin_token"
    token = path.read_text().strip()
    assert len(token) >= 24 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token in caplog.text and first.admin_source == "file"
    caplog.clear()
    second = PairingService(tmp_path)  # next boot: same token, not printed again
    second.open()
    assert second.is_admin(token) and not second.is_admin(token + "x") and token not in caplog.text
    env = PairingService(tmp_path / "other", "from-env")
    assert env.is_admin("from-env") and env.admin_source == "env" and not (tmp_path / "other" / "admin_token").exists()


def test_generated_admin_token_is_one_for_every_replica_on_redis(tmp_path: Path, redis_server,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import redis
    redis.Redis.from_url(redis_server.url).flushdb()
    caplog.set_level(logging.INFO, "ollabridge.pairing")
    from ollabridge.store.redis import RedisState
    first, second = RedisState(redis_server.url), RedisState(redis_server.url)
    try:
        a = PairingService(tmp_path / "a", state=first)
        a.open()
        token = a.admin_token
        assert len(token) >= 24 and token in caplog.text and not (tmp_path / "a" / "admin_token").exists()
        caplog.clear()
        b = PairingService(tmp_path / "b", state=second)  # another replica: the same token, not printed
        assert b.is_admin(token) and token not in caplog.text
    finally:
        first.close()
        second.close()


def test_a_code_started_on_one_replica_is_approved_on_another_and_delivered_once(tmp_path: Path,
                                                                                 make_state) -> None:
    if make_state.kind == "sqlite":
        pytest.skip("one replica: codes live in its memory")
    a = PairingService(tmp_path, ADMIN, interval=0, state=make_state())
    b = PairingService(tmp_path, ADMIN, interval=0, state=make_state())
    flow = a.start("gpu", client="1.2.3.4", offers={"models": ["m:7b"]})
    assert [p["user_code"] for p in b.pending()] == [flow["user_code"]] and b.lookup(flow["user_code"])["models"] == ["m:7b"]
    assert _error(lambda: a.poll(flow["device_code"])) == "authorization_pending"
    approved = b.approve(flow["user_code"], ADMIN)
    with pytest.raises(CodeUsed, match="already approved"):
        a.approve(flow["user_code"], ADMIN)
    cred = a.poll(flow["device_code"])
    assert cred["node_id"] == approved["node_id"]
    assert _error(lambda: b.poll(flow["device_code"])) == "invalid_grant"  # exactly once, on any replica
    assert b.authenticate(cred["node_token"])["name"] == "gpu" and b.pending() == []
