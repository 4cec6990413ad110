"""Per-identity limits: requests a minute (a token bucket) and requests in flight.

An identity is `key:<id>` for a request with a valid API key, else `ip:<client address>`. All
calls come from the event loop (no lock); each is a dict lookup and a little arithmetic.

With a shared budget (several replicas on Redis: ollabridge/store/redis.py, GCRA) `spend` takes the
requests a minute from it, so a 60 rpm key gets 60 a minute over all replicas; while Redis is down
each replica falls back to its own bucket here (up to `rpm` per replica until Redis is back).
Requests in flight (`enter`/`leave`) are counted per replica: a shared count would leak a crashed
replica's streams.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ollabridge.store.base import StateUnavailable


class _Bucket:
    __slots__ = ("tokens", "at", "active")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.active = 0


class RateLimiter:
    def __init__(self, max_identities: int = 50_000, shared: Any = None) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self.max_identities = max_identities
        self.shared = shared  # None, or a budget with `async take(ident, rpm) -> int` over every replica

    def _bucket(self, ident: str, rpm: int, now: float) -> _Bucket:
        bucket = self._buckets.get(ident)
        if bucket is None:
            if len(self._buckets) >= self.max_identities:
                self._prune(now)
            bucket = self._buckets[ident] = _Bucket(float(rpm), now)
        return bucket

    def take(self, ident: str, rpm: int, now: float | None = None) -> int:
        """Spend one request; 0 when allowed, else the seconds until one is (for Retry-After)."""
        if rpm <= 0:
            return 0
        now = time.monotonic() if now is None else now
        bucket = self._bucket(ident, rpm, now)
        bucket.tokens = min(float(rpm), bucket.tokens + (now - bucket.at) * rpm / 60.0)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) * 60.0 / rpm))

    async def spend(self, ident: str, rpm: int) -> int:
        """`take` from the shared budget when there is one (and Redis answers), else from this bucket."""
        if rpm > 0 and self.shared is not None:
            try:
                return await self.shared.take(ident, rpm)
            except StateUnavailable:
                pass
        return self.take(ident, rpm)

    def enter(self, ident: str, limit: int, rpm: int = 0) -> bool:
        """Start a request in flight; False when `limit` are already (then nothing is counted)."""
        bucket = self._bucket(ident, rpm, time.monotonic())
        if limit > 0 and bucket.active >= limit:
            return False
        bucket.active += 1
        return True

    def leave(self, ident: str) -> None:
        bucket = self._buckets.get(ident)
        if bucket is not None and bucket.active > 0:
            bucket.active -= 1

    def _prune(self, now: float) -> None:
        """Forget identities idle for a minute or more (their bucket is full again); when that is not
        enough (a flood of new addresses), the least recently seen half of those with nothing in flight."""
        for ident, bucket in list(self._buckets.items()):
            if bucket.active == 0 and now - bucket.at >= 60.0:
                del self._buckets[ident]
        if len(self._buckets) >= self.max_identities:
            idle = sorted((b.at, ident) for ident, b in self._buckets.items() if b.active == 0)
            for _, ident in idle[:max(1, len(idle) // 2)]:
                del self._buckets[ident]

    def __len__(self) -> int:
        return len(self._buckets)
