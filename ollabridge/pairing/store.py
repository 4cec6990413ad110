"""Paired nodes in SQLite under the data dir: node tokens are kept only as SHA-256 hashes.

`SQLiteStore` is the shared base (file mode, WAL, lock, helpers); `ollabridge.keys` reuses it.

Thread-safe (one connection behind a lock): the API calls it from the event loop, the web UI
may call it from a worker thread. Every statement is tiny and local, so it runs inline.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Generic, TypeVar

SCHEMA = """
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


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SQLiteStore:
    """One owner-only (0600) SQLite file under the data dir, one connection behind a lock.

    Subclasses give their `SCHEMA` and `_row`; the API keys (ollabridge/keys.py) live in the same
    file as the paired nodes, each store with its own connection (WAL lets them share it).
    """

    SCHEMA = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only; SQLite gives its -wal and -shm files the database's mode.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(self.SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, row: sqlite3.Row) -> dict[str, Any]:
        return dict(row)

    def _one(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return self._row(row) if row else None

    def _all(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._row(r) for r in rows]

    def _exec(self, sql: str, args: tuple = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        with self._lock:
            return self._db.execute(sql, args).rowcount


Store = TypeVar("Store", bound="SQLiteStore")


class OpensStore(Generic[Store]):
    """A service over an SQLiteStore opened on first use (or by its own `open()`), closed by `close()`.

    Subclasses set `self._store = None` and `self._lock` in `__init__` and open the store in `open()`.
    """

    _store: Store | None
    _lock: Any

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self.open()
        assert self._store is not None
        return self._store


class NodeStore(SQLiteStore):
    SCHEMA = SCHEMA

    def _row(self, row: sqlite3.Row) -> dict[str, Any]:
        return _row(row)

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


def _row(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data.pop("token_hash", None)
    for column, empty in (("models", []), ("capabilities", {})):
        try:
            data[column] = json.loads(data.get(column) or "null") or empty
        except ValueError:
            data[column] = empty
    return data
