"""Persistent state shared by keys, pairing, rate limits and lock-outs (ollabridge/store/base.py says
what it offers). `open_state` is the one place that picks the implementation: `local` (one replica:
SQLite and memory) or `redis` (several replicas, OLLABRIDGE_REDIS_URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_state(data_dir: str | Path, redis_url: str = "") -> Any:
    """The shared state for this gateway: on Redis when `redis_url` is set, else in `data_dir`."""
    if redis_url:
        from ollabridge.store.redis import RedisState
        return RedisState(redis_url)
    from ollabridge.store.local import LocalState
    return LocalState(data_dir)
