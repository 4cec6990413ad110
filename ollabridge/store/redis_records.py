"""Keys, nodes and pending device codes as Redis hashes (rows shaped as ollabridge/store/base.py says).

Layout, all under `ollabridge:`: `key:<id>` (a hash) with `keyhash:<sha256>` -> id and the sorted set
`keys` (by creation); `node:<id>`, `nodetoken:<sha256>` -> id and `nodes`; `code:<device_code>` and
`usercode:<code>` -> device_code, both expiring `keep` seconds after the code does, and `codes` (by
expiry). Secrets only as SHA-256 hashes. Every multi-key write is one MULTI/EXEC or one script.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ollabridge.store.base import StateUnavailable
from ollabridge.store.sqlite import hash_token

if TYPE_CHECKING:
    from ollabridge.store.redis import RedisState

PREFIX = "ollabridge:"

# Set field ARGV[1] to ARGV[2] in hash KEYS[1] if the hash exists and the field is unset: 1 if done.
SET_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Set fields ARGV[2..] (name, value pairs) in hash KEYS[1] if its status is ARGV[1]: 1 if done.
MOVE = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

KEY_TYPES = {"created": float, "revoked": float, "rpm": int, "streams": int, "weight": float}
NODE_TYPES = {"created": float, "last_seen": float, "revoked": float, "models": json.loads,
              "capabilities": json.loads}
CODE_TYPES = {"offers": json.loads, "created": float, "expires_at": float, "interval": float,
              "last_poll": float, "decided_at": float}


def _load(raw: dict[str, str], types: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any] | None:
    """A Redis hash as a row: typed values, None for the columns it lacks."""
    if not raw:
        return None
    return {c: (types[c](raw[c]) if c in types else raw[c]) if c in raw else None for c in columns}


def _dump(fields: dict[str, Any]) -> dict[str, str]:
    """Fields for HSET: None left out, lists and dicts as JSON, numbers as text."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in fields.items() if v is not None}


class RedisKeys:
    COLUMNS = ("key_id", "name", "key_hash", "prefix", "created", "revoked", "rpm", "streams", "weight")

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._set_once = state.sync.register_script(SET_ONCE)

    def add(self, key_id: str, name: str, secret: str, rpm: int | None, streams: int | None,
            weight: float | None = None) -> dict[str, Any]:
        now, digest = time.time(), hash_token(secret)
        row = {"key_id": key_id, "name": name, "key_hash": digest, "prefix": secret[:8], "created": now,
               "rpm": rpm, "streams": streams, "weight": weight}

        def write() -> None:
            with self.state.sync.pipeline(transaction=True) as tx:
                tx.hset(PREFIX + "key:" + key_id, mapping=_dump(row))
                tx.set(PREFIX + "keyhash:" + digest, key_id)
                tx.zadd(PREFIX + "keys", {key_id: now})
                tx.execute()
        self.state.call(write)
        return self.get(key_id) or {}

    def get(self, key_id: str) -> dict[str, Any] | None:
        raw = self.state.call(lambda: self.state.sync.hgetall(PREFIX + "key:" + key_id))
        return _load(raw, KEY_TYPES, self.COLUMNS)

    def by_hash(self, digest: str) -> dict[str, Any] | None:
        key_id = self.state.call(lambda: self.state.sync.get(PREFIX + "keyhash:" + digest))
        return self.get(key_id) if key_id else None

    def live(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, str]]:
            ids = self.state.sync.zrange(PREFIX + "keys", 0, -1)
            with self.state.sync.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(PREFIX + "key:" + key_id)
                return pipe.execute()
        rows = [_load(raw, KEY_TYPES, self.COLUMNS) for raw in self.state.call(read)]
        return [row for row in rows if row and row["revoked"] is None]

    def revoke(self, key_id: str) -> bool:
        done = self.state.call(lambda: self._set_once(keys=[PREFIX + "key:" + key_id], args=["revoked", time.time()]))
        return bool(done)


class RedisNodes:
    """Paired nodes. A node seen while Redis was up is still let in while it is down (from memory)."""

    COLUMNS = ("node_id", "name", "created", "last_seen", "revoked", "agent", "models", "capabilities",
               "approved_from")

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._set_once = state.sync.register_script(SET_ONCE)
        self._known: dict[str, dict[str, Any]] = {}  # by token hash and by node_id: the fallback
        state.subscribe("node_revoked", lambda event: self._forget(event.get("node_id", "")))

    def _row(self, raw: dict[str, str]) -> dict[str, Any] | None:
        row = _load(raw, NODE_TYPES, self.COLUMNS)
        if row is not None:
            row["models"] = row["models"] or []
            row["capabilities"] = row["capabilities"] or {}
        return row

    def add(self, node_id: str, name: str, token: str, approved_from: str = "") -> None:
        now, digest = time.time(), hash_token(token)
        row = {"node_id": node_id, "name": name, "token_hash": digest, "created": now,
               "approved_from": approved_from, "models": [], "capabilities": {}}

        def write() -> None:
            with self.state.sync.pipeline(transaction=True) as tx:
                tx.hset(PREFIX + "node:" + node_id, mapping=_dump(row))
                tx.set(PREFIX + "nodetoken:" + digest, node_id)
                tx.zadd(PREFIX + "nodes", {node_id: now})
                tx.execute()
        self.state.call(write)

    def by_token(self, token: str) -> dict[str, Any] | None:
        """The node (revoked ones too, with `revoked` set) whose token this is, or None."""
        digest = hash_token(token)
        try:
            node_id = self.state.call(lambda: self.state.sync.get(PREFIX + "nodetoken:" + digest))
            row = self.get(node_id) if node_id else None
        except StateUnavailable:
            if digest in self._known:
                return dict(self._known[digest])
            raise
        if row is not None and not row["revoked"]:
            self._known[digest] = self._known[row["node_id"]] = row
        return row

    def get(self, node_id: str) -> dict[str, Any] | None:
        try:
            return self._row(self.state.call(lambda: self.state.sync.hgetall(PREFIX + "node:" + node_id)))
        except StateUnavailable:
            if node_id in self._known:
                return dict(self._known[node_id])
            raise

    def list(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        def read() -> list[dict[str, str]]:
            ids = self.state.sync.zrange(PREFIX + "nodes", 0, -1)
            with self.state.sync.pipeline(transaction=False) as pipe:
                for node_id in ids:
                    pipe.hgetall(PREFIX + "node:" + node_id)
                return pipe.execute()
        rows = [self._row(raw) for raw in self.state.call(read)]
        return [row for row in rows if row and (include_revoked or row["revoked"] is None)]

    def seen(self, node_id: str, *, agent: str | None = None, models: list | None = None,
             capabilities: dict | None = None) -> None:
        fields = _dump({"last_seen": time.time(), "agent": agent, "models": models, "capabilities": capabilities})
        key = PREFIX + "node:" + node_id
        self.state.call(lambda: self.state.sync.exists(key) and self.state.sync.hset(key, mapping=fields))

    def revoke(self, node_id: str) -> bool:
        self._forget(node_id)
        done = self.state.call(lambda: self._set_once(keys=[PREFIX + "node:" + node_id], args=["revoked", time.time()]))
        return bool(done)

    def _forget(self, node_id: str) -> None:
        for known, row in list(self._known.items()):
            if row.get("node_id") == node_id:
                self._known.pop(known, None)


class RedisCodes:
    """Pending device codes, shared: a code started on one replica is approved and polled on any."""

    COLUMNS = ("device_code", "user_code", "name", "client", "offers", "created", "expires_at", "interval",
               "status", "node_id", "last_poll", "decided_at")

    def __init__(self, state: RedisState, keep: float = 600.0) -> None:
        self.state = state
        self.keep = keep
        self._move = state.sync.register_script(MOVE)

    def add(self, record: dict[str, Any]) -> bool:
        device, user = record["device_code"], record["user_code"]
        ttl = max(1, int(record["expires_at"] - time.time() + self.keep))

        def write() -> bool:
            sync = self.state.sync
            if not sync.set(PREFIX + "usercode:" + user, device, nx=True, ex=ttl):
                return False
            with sync.pipeline(transaction=True) as tx:
                tx.hset(PREFIX + "code:" + device, mapping=_dump(record))
                tx.expire(PREFIX + "code:" + device, ttl)
                tx.zadd(PREFIX + "codes", {device: record["expires_at"]})
                tx.zremrangebyscore(PREFIX + "codes", "-inf", time.time() - self.keep)
                tx.execute()
            return True
        return self.state.call(write)

    def get(self, device_code: str) -> dict[str, Any] | None:
        if not device_code:
            return None
        raw = self.state.call(lambda: self.state.sync.hgetall(PREFIX + "code:" + device_code))
        return _load(raw, CODE_TYPES, self.COLUMNS)

    def by_user(self, user_code: str) -> dict[str, Any] | None:
        device = self.state.call(lambda: self.state.sync.get(PREFIX + "usercode:" + user_code))
        return self.get(device) if device else None

    def waiting(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, str]]:
            devices = self.state.sync.zrangebyscore(PREFIX + "codes", time.time() - self.keep, "+inf")
            with self.state.sync.pipeline(transaction=False) as pipe:
                for device in devices:
                    pipe.hgetall(PREFIX + "code:" + device)
                return pipe.execute()
        rows = [_load(raw, CODE_TYPES, self.COLUMNS) for raw in self.state.call(read)]
        return [row for row in rows if row and row["status"] == "pending"]

    def update(self, device_code: str, **fields: Any) -> None:
        key = PREFIX + "code:" + device_code
        self.state.call(lambda: self.state.sync.exists(key) and self.state.sync.hset(key, mapping=_dump(fields)))

    def move(self, device_code: str, from_status: str, **fields: Any) -> bool:
        args = [from_status] + [part for pair in _dump(fields).items() for part in pair]
        return bool(self.state.call(lambda: self._move(keys=[PREFIX + "code:" + device_code], args=args)))
