"""Paired nodes in SQLite under the data dir: node tokens are kept only as SHA-256 hashes.

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
from typing import Any

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


class NodeStore:
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
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return _row(row) if row else None

    def add(self, node_id: str, name: str, token: str, approved_from: str = "") -> None:
        with self._lock:
            self._db.execute("INSERT INTO nodes (node_id, name, token_hash, created, approved_from) "
                             "VALUES (?, ?, ?, ?, ?)", (node_id, name, hash_token(token), time.time(),
                                                         approved_from))

    def by_token(self, token: str) -> dict[str, Any] | None:
        """The node (revoked ones too, with `revoked` set) whose token this is, or None."""
        return self._one("SELECT * FROM nodes WHERE token_hash = ?", (hash_token(token),))

    def get(self, node_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM nodes WHERE node_id = ?", (node_id,))

    def list(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT * FROM nodes" + ("" if include_revoked else " WHERE revoked IS NULL") + " ORDER BY created"
        with self._lock:
            rows = self._db.execute(sql).fetchall()
        return [_row(r) for r in rows]

    def seen(self, node_id: str, *, agent: str | None = None, models: list | None = None,
             capabilities: dict | None = None) -> None:
        sets, args = ["last_seen = ?"], [time.time()]
        for column, value in (("agent", agent), ("models", models), ("capabilities", capabilities)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value if isinstance(value, str) else json.dumps(value))
        with self._lock:
            self._db.execute(f"UPDATE nodes SET {', '.join(sets)} WHERE node_id = ?", (*args, node_id))

    def revoke(self, node_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE nodes SET revoked = ? WHERE node_id = ? AND revoked IS NULL",
                                   (time.time(), node_id))
        return cur.rowcount > 0


def _row(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data.pop("token_hash", None)
    for column, empty in (("models", []), ("capabilities", {})):
        try:
            data[column] = json.loads(data.get(column) or "null") or empty
        except ValueError:
            data[column] = empty
    return data
