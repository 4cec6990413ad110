"""The shared state of several replicas on one Redis (OLLABRIDGE_REDIS_URL): see ollabridge/store/base.py.

One sync client for the records (small, rare writes; the web UI calls them from worker threads too),
one asyncio client for the per-request rate budget, and one thread that listens on the channel
`ollabridge:events` and pings Redis every second: it re-subscribes by itself after Redis restarts
and then has every cache reloaded ("resync"). While Redis is unreachable every call needing it fails
at once with StateUnavailable (503) instead of waiting, and `health()` says so.

Rate budget: GCRA, the token bucket's exact twin in one key per identity: a stored "theoretical
arrival time" advanced by 60/rpm per request, refused when it would be more than 60 s ahead of
Redis' own clock (so `rpm` at once, then one per 60/rpm s, in total over every replica; the
replicas' clocks do not matter). One atomic script call per request.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from typing import Any, Callable

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.asyncio.retry import Retry as AsyncRetry
from redis.retry import Retry

from ollabridge.store.base import StateUnavailable
from ollabridge.store.redis_records import PREFIX, RedisCodes, RedisKeys, RedisNodes

log = logging.getLogger("ollabridge.store.redis")

CHANNEL = PREFIX + "events"
# One retry: the first command on a pooled connection that a Redis restart closed reconnects at once.
_OPTIONS = dict(decode_responses=True, socket_timeout=1.0, socket_connect_timeout=0.5, client_name="ollabridge")

GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = 60 / tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval
if new - now > 60.000001 then return math.max(1, math.ceil(new - 60 - now)) end
redis.call('SET', KEYS[1], string.format('%.6f', new), 'PX', math.ceil((new - now) * 1000) + 1)
return 0
"""

# KEYS: the address's wrong tries (a sorted set), its record (until, strikes), the addresses locked out
# (a sorted set by the Unix time their lock ends). ARGV: limit, lockout, window, max lockout, a unique
# member, the address. Returns {0, 0} counted, {1, s} locked now for s seconds,
# {2, s} already locked for s more seconds.
WRONG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, lockout, window, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local untl = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
if now < untl then return {2, tostring(untl - now)} end
local strikes = tonumber(redis.call('HGET', KEYS[2], 'strikes') or '0')
if strikes > 0 and now - untl > max then strikes = 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('EXPIRE', KEYS[1], math.ceil(window))
if redis.call('ZCARD', KEYS[1]) >= limit then
  redis.call('DEL', KEYS[1])
  local lock = math.min(max, lockout * 2 ^ strikes)
  redis.call('HSET', KEYS[2], 'until', now + lock, 'strikes', strikes + 1)
  redis.call('EXPIRE', KEYS[2], math.ceil(lock + max))
  redis.call('ZADD', KEYS[3], now + lock, ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  return {1, tostring(lock)}
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'strikes', strikes) end
return {0, '0'}
"""


class RedisState:
    """Keys, nodes, device codes, the admin token, rate budgets and lock-outs on one Redis."""

    def __init__(self, url: str, replica: str | None = None) -> None:
        self.url = url
        self.replica = replica or f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(3)}"
        self.sync = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 1), **_OPTIONS)
        self.connected = False
        self.detail = "not connected yet"
        self._subscribers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._closing = threading.Event()
        self._keys = RedisKeys(self)
        self._nodes = RedisNodes(self)
        self._codes = RedisCodes(self)
        self._wrong = self.sync.register_script(WRONG)
        self.budget = RedisBudget(self)
        self.ledger = RedisLedger(self)
        self._probe()
        self._thread = threading.Thread(target=self._listen, name="ollabridge-redis-events", daemon=True)
        self._thread.start()

    # -- records ---------------------------------------------------------------------------------
    def keys(self) -> RedisKeys:
        return self._keys

    def nodes(self) -> RedisNodes:
        return self._nodes

    def codes(self) -> RedisCodes:
        return self._codes

    def admin_token(self, make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> tuple[str, bool]:
        """The one generated admin token of every replica: the first replica's `make()` wins."""
        created = self.call(lambda: self.sync.set(PREFIX + "admin_token", make(), nx=True))
        return self.call(lambda: self.sync.get(PREFIX + "admin_token")), bool(created)

    def where(self) -> str:
        from ollabridge.status import redact
        return f"Redis at {redact(self.url)} (key {PREFIX}admin_token)"

    # -- calls -------------------------------------------------------------------------------------
    def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` against Redis, or StateUnavailable at once while Redis is known to be down."""
        if not self.connected:
            raise StateUnavailable(f"The shared state is unreachable ({self.detail}); try again shortly.")
        try:
            return fn()
        except redis.RedisError as exc:
            self._down(exc)
            raise StateUnavailable(f"The shared state is unreachable ({self.detail}); try again shortly.") from exc

    def _down(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("Redis at %s unreachable: %s; serving with what this replica holds", self._shown(), exc)
        self.connected = False
        self.detail = f"{type(exc).__name__}: {exc}"[:200]

    def _up(self) -> None:
        if not self.connected:
            self.connected = True
            self.detail = "ok"
            log.info("Redis at %s connected (replica %s)", self._shown(), self.replica)
            self._deliver({"kind": "resync"})

    def _probe(self) -> bool:
        try:
            self.sync.ping()
        except redis.RedisError as exc:
            self._down(exc)
            return False
        self._up()
        return True

    def _shown(self) -> str:
        from ollabridge.status import redact
        return redact(self.url)

    # -- events --------------------------------------------------------------------------------------
    def publish(self, kind: str, **data: Any) -> None:
        message = json.dumps({"from": self.replica, "kind": kind, **data})
        try:
            self.call(lambda: self.sync.publish(CHANNEL, message))
        except StateUnavailable:
            log.warning("could not tell the other replicas %s %s (Redis down); they reload on reconnect", kind, data)

    def subscribe(self, kind: str, callback: Callable[[dict[str, Any]], None]) -> None:
        self._subscribers.setdefault(kind, []).append(callback)

    def _deliver(self, event: dict[str, Any]) -> None:
        for callback in self._subscribers.get(event.get("kind", ""), []):
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - one subscriber's failure must not stop the others
                log.exception("event %s: subscriber failed", event.get("kind"))

    def _listen(self) -> None:
        """Hear the other replicas; on any error wait (0.1 s, doubling to 1 s) and subscribe again."""
        pause = 0.1
        while not self._closing.is_set():
            pubsub = None
            try:
                pubsub = self.sync.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                self._probe() or pubsub.ping()
                pause, pinged = 0.1, time.monotonic()
                while not self._closing.is_set():
                    message = pubsub.get_message(timeout=0.25)
                    if message and message.get("type") == "message":
                        event = json.loads(message["data"])
                        if event.get("from") != self.replica:
                            self._deliver(event)
                    if time.monotonic() - pinged >= 1.0:
                        self._probe() or pubsub.ping()  # a lost connection surfaces here within a second
                        pinged = time.monotonic()
            except (redis.RedisError, OSError, ValueError) as exc:
                self._down(exc)
                self._closing.wait(pause)
                pause = min(1.0, pause * 2)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass

    # -- life ------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {"redis": {"url": self._shown(), "connected": self.connected, "detail": self.detail}}

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=2)
        self.sync.close()


class RedisBudget:
    """Requests a minute per identity over every replica (GCRA, one script call: module docstring)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._client: redis.asyncio.Redis | None = None
        self._script: Any = None

    async def take(self, ident: str, rpm: int) -> int:
        """0 when allowed, else seconds until one is; StateUnavailable while Redis is down."""
        if not self.state.connected:
            raise StateUnavailable("Redis is down")
        if self._client is None:
            self._client = redis.asyncio.Redis.from_url(self.state.url, retry=AsyncRetry(NoBackoff(), 1), **_OPTIONS)
            self._script = self._client.register_script(GCRA)
        try:
            return int(await self._script(keys=[PREFIX + "rate:" + ident], args=[rpm]))
        except redis.RedisError as exc:
            self.state._down(exc)
            raise StateUnavailable("Redis is down") from exc


class RedisLedger:
    """Wrong secrets per address over every replica; a lock-out is told to the others at once."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def wrong(self, client: str, limit: int, lockout: float, window: float, max_lockout: float) -> tuple[int, float]:
        keys = [PREFIX + "guess:w:" + client, PREFIX + "guess:s:" + client, PREFIX + "locks"]
        args = [limit, lockout, window, max_lockout, f"{time.time()}:{secrets.token_hex(4)}", client]
        state, seconds = self.state.call(lambda: self.state._wrong(keys=keys, args=args))
        if int(state) == 1:
            self.state.publish("locked", client=client, seconds=float(seconds))
        return int(state), float(seconds)

    def on_locked(self, callback: Callable[[str, float], None]) -> None:
        """`callback(client, seconds)` when another replica locks an address out, and for each address
        locked now, at once and after every reconnect (a replica started later refuses them too)."""
        self.state.subscribe("locked", lambda event: callback(event["client"], float(event["seconds"])))

        def current(event: Any = None) -> None:
            try:
                now = time.time()
                for client, until in self.state.call(
                        lambda: self.state.sync.zrangebyscore(PREFIX + "locks", now, "+inf", withscores=True)):
                    callback(client, until - now)
            except StateUnavailable:
                pass
        self.state.subscribe("resync", current)
        current()
