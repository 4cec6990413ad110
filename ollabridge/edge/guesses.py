"""Wrong secrets per client address: the one guard for admin tokens, API keys and pairing codes.

Every place that checks a secret a caller sent (the edge's API keys, `PairingService.check_admin` for
`/admin/*`, `/device/*`, `/metrics` and the web UI, `/device/token`'s device codes) calls `guard`. An
address may be wrong `limit` times a minute (OLLABRIDGE_GUESS_LIMIT, 10); then it is locked out for
`lockout` seconds (OLLABRIDGE_GUESS_LOCKOUT, 60), twice as long each time it is locked again (at most
an hour), and every check from it answers 429 with `Retry-After`, the right secret too: a lock that let
the right one through would still tell a guesser when it found it. A missing secret is no guess.
An address's record is forgotten an hour after its last lock-out ends. All calls come from the event
loop or from the UI's worker threads: a lock keeps the counts right.

With a shared ledger (several replicas on Redis) wrong tries are counted there, over all replicas (one
script call per wrong try), and a lock-out is told to every replica at once; the right secret's check
stays local (no I/O). While Redis is down each replica counts alone here.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any, Callable

from ollabridge.errors import GatewayError
from ollabridge.store.base import StateUnavailable

WINDOW = 60.0  # seconds over which wrong tries are counted
MAX_LOCKOUT = 3600.0


class TooManyGuesses(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_wrong_secrets"


class _Record:
    __slots__ = ("wrong", "strikes", "until")

    def __init__(self) -> None:
        self.wrong: deque[float] = deque()  # times of the wrong tries in the last WINDOW
        self.strikes = 0  # lock-outs so far
        self.until = 0.0  # locked until then


class Guesses:
    def __init__(self, limit: int = 10, lockout: float = 60.0, *, max_addresses: int = 50_000,
                 on_refuse: Callable[[], None] | None = None, shared: Any = None) -> None:
        self.limit = limit
        self.lockout = lockout
        self.max_addresses = max_addresses
        self.on_refuse = on_refuse  # called for each 429 (the gateway counts it in its metrics)
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()
        # None, or a ledger over every replica: `wrong(client, limit, lockout, window, max_lockout) ->
        # (0 counted | 1 locked now | 2 locked, seconds)` and `on_locked(callback(client, seconds))`.
        self.shared = shared
        if shared is not None:
            shared.on_locked(self.locked)

    def locked(self, client: str, seconds: float) -> None:
        """Another replica locked `client` out for `seconds`: refuse it here too."""
        with self._lock:
            record = self._records.setdefault(client, _Record())
            record.until = max(record.until, time.monotonic() + seconds)

    def guard(self, client: str, right: bool, now: float | None = None) -> bool:
        """Whether the secret `client` sent is `right`; a wrong one counts against the address. Raises
        TooManyGuesses (429) while the address is locked out, whatever it sent."""
        if self.limit <= 0:
            return right
        now = time.monotonic() if now is None else now
        with self._lock:
            record = self._records.get(client)
            if record is not None and now < record.until:
                retry = max(1, math.ceil(record.until - now))
            elif right:
                return True
            elif self.shared is not None and (state := self._shared_wrong(client, now)) is not None:
                if state < 2:  # counted, or locked by this very try (refused from the next one)
                    return False
                retry = max(1, math.ceil(self._records[client].until - now))
            else:
                self._wrong(client, record, now)
                return False
        if self.on_refuse is not None:
            self.on_refuse()
        raise TooManyGuesses(f"Too many wrong tokens or keys from this address; try again in {retry}s.",
                             headers={"Retry-After": str(retry)})

    def _shared_wrong(self, client: str, now: float) -> int | None:
        """Count a wrong try in the shared ledger: 0 counted, 1 locked now, 2 already locked (the lock
        is kept here too); None when it cannot be reached (then it is counted here)."""
        try:
            state, seconds = self.shared.wrong(client, self.limit, self.lockout, WINDOW, MAX_LOCKOUT)
        except StateUnavailable:
            return None
        if state:
            record = self._records.setdefault(client, _Record())
            record.until = now + seconds
        return state

    def _wrong(self, client: str, record: _Record | None, now: float) -> None:
        if record is None:
            if len(self._records) >= self.max_addresses:
                self._prune(now)
            record = self._records[client] = _Record()
        if record.strikes and now - record.until > MAX_LOCKOUT:
            record.strikes = 0  # an hour of good behaviour after its last lock-out
        while record.wrong and now - record.wrong[0] >= WINDOW:
            record.wrong.popleft()
        record.wrong.append(now)
        if len(record.wrong) >= self.limit:
            record.wrong.clear()
            record.until = now + min(MAX_LOCKOUT, self.lockout * 2 ** record.strikes)
            record.strikes += 1

    def _prune(self, now: float) -> None:
        """Forget addresses that are not locked and were last wrong a window ago (and, past an hour after
        their last lock-out, their strikes); when a flood of new addresses leaves too many, the unlocked
        ones oldest first, down to half."""
        for client, record in list(self._records.items()):
            if now >= record.until and (not record.wrong or now - record.wrong[-1] >= WINDOW) and \
                    (not record.strikes or now - record.until > MAX_LOCKOUT):
                del self._records[client]
        if len(self._records) >= self.max_addresses:
            unlocked = sorted((r.wrong[-1] if r.wrong else r.until, c) for c, r in self._records.items()
                              if now >= r.until)
            for _, client in unlocked[:max(1, len(self._records) // 2)]:
                del self._records[client]

    def __len__(self) -> int:
        return len(self._records)
