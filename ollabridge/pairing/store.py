"""Paired nodes, on the shared store base (ollabridge/store/sqlite.py): node tokens are kept only as
SHA-256 hashes."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ollabridge.store.sqlite import SQLiteStore, hash_token

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
