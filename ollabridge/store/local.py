"""The shared state of one replica: the SQLite file for keys and nodes, device codes in memory, the
admin token in `<data dir>/admin_token`, and no other replica to tell (ollabridge/store/base.py)."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ollabridge.store.sqlite import SQLiteStore, hash_token

KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id    TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    key_hash  TEXT NOT NULL UNIQUE,
    prefix    TEXT NOT NULL,
    created   REAL NOT NULL,
    revoked   REAL,
    rpm       INTEGER,
    streams   INTEGER,
    weight    REAL
);
"""

NODES_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id      TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created      REAL NOT NULL,
    last_seen    REAL,
    revoked      REAL,
    agent        TEXT,
    models       TEXT NOT NULL DEFAULT '[]',
    capabilities TEXT NOT NULL DEFAULT '{}',
    approved_from TEXT
);
"""


class KeyStore(SQLiteStore):
    """Minted API keys, by SHA-256 hash only."""

    SCHEMA = KEYS_SCHEMA

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if "weight" not in {row["name"] for row in self._all("PRAGMA table_info(api_keys)")}:
            self._exec("ALTER TABLE api_keys ADD COLUMN weight REAL")  # a database from before weights

    def add(self, key_id: str, name: str, secret: str, rpm: int | None, streams: int | None,
            weight: float | None = None) -> dict[str, Any]:
        now = time.time()
        self._exec("INSERT INTO api_keys (key_id, name, key_hash, prefix, created, rpm, streams, weight) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (key_id, name, hash_token(secret), secret[:8], now, rpm, streams, weight))
        return self.get(key_id) or {}

    def get(self, key_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM api_keys WHERE key_id = ?", (key_id,))

    def live(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM api_keys WHERE revoked IS NULL ORDER BY created")

    def by_hash(self, digest: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM api_keys WHERE key_hash = ?", (digest,))

    def revoke(self, key_id: str) -> bool:
        return self._exec("UPDATE api_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL",
                          (time.time(), key_id)) > 0


class NodeStore(SQLiteStore):
    """Paired nodes; node tokens are kept only as SHA-256 hashes."""

    SCHEMA = NODES_SCHEMA

    def _row(self, row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        data.pop("token_hash", None)
        for column, empty in (("models", []), ("capabilities", {})):
            try:
                data[column] = json.loads(data.get(column) or "null") or empty
            except ValueError:
                data[column] = empty
        return data

    def add(self, node_id: str, name: str, token: str, approved_from: str = "") -> None:
        self._exec("INSERT INTO nodes (node_id, name, token_hash, created, approved_from) "
                   "VALUES (?, ?, ?, ?, ?)", (node_id, name, hash_token(token), time.time(), approved_from))

    def by_token(self, token: str) -> dict[str, Any] | None:
        """The node (revoked ones too, with `revoked` set) whose token this is, or None."""
        return self._one("SELECT * FROM nodes WHERE token_hash = ?", (hash_token(token),))

    def get(self, node_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM nodes WHERE node_id = ?", (node_id,))

    def list(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM nodes" + ("" if include_revoked else " WHERE revoked IS NULL")
                         + " ORDER BY created")

    def seen(self, node_id: str, *, agent: str | None = None, models: list | None = None,
             capabilities: dict | None = None) -> None:
        sets, args = ["last_seen = ?"], [time.time()]
        for column, value in (("agent", agent), ("models", models), ("capabilities", capabilities)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value if isinstance(value, str) else json.dumps(value))
        self._exec(f"UPDATE nodes SET {', '.join(sets)} WHERE node_id = ?", (*args, node_id))

    def revoke(self, node_id: str) -> bool:
        return self._exec("UPDATE nodes SET revoked = ? WHERE node_id = ? AND revoked IS NULL",
                          (time.time(), node_id)) > 0


class MemoryCodes:
    """Pending device codes in this process, forgotten `keep` seconds after they expired or were decided."""

    def __init__(self, keep: float = 600.0) -> None:
        self.keep = keep
        self._lock = threading.RLock()
        self._by_device: dict[str, dict[str, Any]] = {}
        self._by_user: dict[str, str] = {}

    def add(self, record: dict[str, Any]) -> bool:
        with self._lock:
            self._purge(time.time())
            if record["user_code"] in self._by_user:
                return False
            self._by_device[record["device_code"]] = dict(record)
            self._by_user[record["user_code"]] = record["device_code"]
            return True

    def get(self, device_code: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._by_device.get(device_code)
            return dict(record) if record else None

    def by_user(self, user_code: str) -> dict[str, Any] | None:
        with self._lock:
            return self.get(self._by_user.get(user_code, ""))

    def waiting(self) -> list[dict[str, Any]]:
        with self._lock:
            self._purge(time.time())
            return [dict(r) for r in self._by_device.values() if r["status"] == "pending"]

    def update(self, device_code: str, **fields: Any) -> None:
        with self._lock:
            if device_code in self._by_device:
                self._by_device[device_code].update(fields)

    def move(self, device_code: str, from_status: str, **fields: Any) -> bool:
        with self._lock:
            record = self._by_device.get(device_code)
            if record is None or record["status"] != from_status:
                return False
            record.update(fields)
            return True

    def _purge(self, now: float) -> None:
        for code, r in list(self._by_device.items()):
            ended = r["expires_at"] if r["status"] == "pending" else max(r["decided_at"], r["expires_at"])
            if now - ended > self.keep or (r["status"] == "delivered" and now - r["decided_at"] > self.keep):
                del self._by_device[code]
                self._by_user.pop(r["user_code"], None)


class LocalState:
    """Everything in this process and its data dir: one replica (OLLABRIDGE_REDIS_URL unset)."""

    budget = None
    ledger = None

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.db = self.data_dir / "ollabridge.db"
        self._lock = threading.Lock()
        self._keys: KeyStore | None = None
        self._nodes: NodeStore | None = None
        self._codes = MemoryCodes()

    def keys(self) -> KeyStore:
        with self._lock:
            if self._keys is None:
                self._keys = KeyStore(self.db)
            return self._keys

    def nodes(self) -> NodeStore:
        with self._lock:
            if self._nodes is None:
                self._nodes = NodeStore(self.db)
            return self._nodes

    def codes(self) -> MemoryCodes:
        return self._codes

    def admin_token(self, make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> tuple[str, bool]:
        """The token in `<data dir>/admin_token` (mode 0600), written from `make()` the first time."""
        path = self.data_dir / "admin_token"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            token = path.read_text().strip()
            if token:
                os.chmod(path, 0o600)
                return token, False
        except FileNotFoundError:
            pass
        token = make()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.chmod(path, 0o600)
        return token, True

    def where(self) -> str:
        return str(self.data_dir / "admin_token")

    def publish(self, kind: str, **data: Any) -> None:
        """No other replica to tell."""

    def subscribe(self, kind: str, callback: Callable[[dict[str, Any]], None]) -> None:
        """No other replica to hear."""

    def health(self) -> dict[str, Any]:
        return {"redis": None}

    def close(self) -> None:
        with self._lock:
            for store in (self._keys, self._nodes):
                if store is not None:
                    store.close()
            self._keys = self._nodes = None
