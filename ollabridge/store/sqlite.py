"""The store base that keys and pairing share: one owner-only SQLite file under the data dir.

`SQLiteStore` holds the file (mode 0600, WAL, one connection behind a lock, tiny query helpers); its
tables are in ollabridge/store/local.py. `OpensStore` is a service over records of the shared state,
whichever implementation `ollabridge.store.open_state` picked (SQLite here, or Redis).

Thread-safe: the API calls it from the event loop, the web UI may call it from a worker thread.
Every statement is tiny and local, so it runs inline.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC to the second (what the API and the UI show), None for None."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SQLiteStore:
    """One owner-only (0600) SQLite file under the data dir, one connection behind a lock.

    Subclasses give their `SCHEMA` and `_row`; the API keys (ollabridge/edge/keys.py) live in the same
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


Records = TypeVar("Records")


class OpensStore(Generic[Records]):
    """A service over records of the shared state (`ollabridge.store.open_state`), got on first use
    (or by its own `open()`); `close()` closes the state when the service opened it itself.

    Subclasses set `self._store = None`, `self._lock`, `self._state` and `self._owns_state` in
    `__init__` and get their records in `open()`.
    """

    _store: Records | None
    _lock: Any
    _state: Any
    _owns_state: bool

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            self._store = None
            if self._owns_state:
                self._state.close()

    @property
    def store(self) -> Records:
        if self._store is None:
            self.open()
        assert self._store is not None
        return self._store
