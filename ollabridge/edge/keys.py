"""API keys for the public API: `OLLABRIDGE_API_KEYS` plus keys the owner mints and revokes.

Minted keys (`obk_` + 256 random bits) are shown once and stored only as SHA-256 hashes in the
shared state (`ollabridge.store.open_state`: the data dir's `ollabridge.db`, or Redis for several
replicas). Every key lives in memory too, by hash, so checking one costs a hash and a dict lookup (a secret
not there is looked up once in the store: a key just minted on another replica works at once); a
key minted or revoked on another replica reloads that copy within a second (the state's
"keys_changed" event, and "resync" after Redis comes back). While Redis is down the keys already
loaded keep working; with Redis down from the start the API stays closed to all but
OLLABRIDGE_API_KEYS (never open by accident). With no key configured and none minted the API is
open. The admin token is never an API key.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ollabridge.errors import GatewayError
from ollabridge.store import open_state
from ollabridge.store.base import StateUnavailable
from ollabridge.store.sqlite import OpensStore, hash_token, iso

log = logging.getLogger("ollabridge.edge.keys")

class KeyNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "key_not_found"


@dataclass(frozen=True)
class Key:
    """Who a request is: `id` names it in logs and metrics (never the secret)."""

    id: str
    name: str
    source: str  # "env" or "minted"
    rpm: int | None = None  # None: the gateway's OLLABRIDGE_KEY_RATE_LIMIT_RPM
    streams: int | None = None
    weight: float = 1.0  # its share of the router's queue: turns per turn of a weight-1 caller


class ApiKeys(OpensStore[Any]):
    """The keys the API accepts. `check(secret)` is the per-request call (no I/O)."""

    def __init__(self, data_dir: str | Path, env_keys: list[str], is_admin: Callable[[str], bool],
                 state: Any = None) -> None:
        self.data_dir = Path(data_dir)
        self._state = state if state is not None else open_state(self.data_dir)
        self._owns_state = state is None
        self._ever_loaded = self._missing = False
        self._is_admin = is_admin
        self._env: dict[str, Key] = {}
        for secret in env_keys:
            digest = hash_token(secret)
            self._env[digest] = Key(id=f"env-{digest[:8]}", name=f"OLLABRIDGE_API_KEYS #{len(self._env) + 1}",
                                    source="env")
        self._minted: dict[str, Key] = {}
        self._store: Any = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._store is None:
                self._store = self._state.keys()
                self._state.subscribe("keys_changed", self._reload)
                self._state.subscribe("resync", self._reload)
        self._reload()
        if self.enabled:
            log.info("API keys required on /v1, /ollama/v1 and /ollama/api (%d from OLLABRIDGE_API_KEYS, %d minted)",
                     len(self._env), len(self._minted))

    def drop_admin_token(self, admin_token: str) -> None:
        """The admin token listed in OLLABRIDGE_API_KEYS is refused as a key (and said so)."""
        if admin_token and self._env.pop(hash_token(admin_token), None) is not None:
            log.warning("OLLABRIDGE_API_KEYS lists the admin token; it is ignored (it never works as an API key)")

    def _reload(self, event: Any = None) -> None:
        """Load the minted keys; while the state is unreachable keep the ones held (none at first:
        then `enabled` stays True, so the API is not left open)."""
        try:
            self._load()
        except StateUnavailable as exc:
            self._missing = not self._ever_loaded
            log.warning("API keys not reloaded: %s", exc)

    def _load(self) -> None:
        self._minted = {row["key_hash"]: self._key(row) for row in self.store.live()}
        self._ever_loaded, self._missing = True, False

    @staticmethod
    def _key(row: dict[str, Any]) -> Key:
        return Key(id=row["key_id"], name=row["name"], source="minted", rpm=row["rpm"], streams=row["streams"],
                   weight=row["weight"] or 1.0)

    # -- the per-request check ---------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self._env or self._minted or self._missing)

    def check(self, secret: str) -> Key | None:
        """The key this secret is, or None (also for the admin token, which is never a key). A secret
        not in memory is looked up once in the store: a key another replica minted a moment ago
        works at once, before its event arrives (wrong secrets are few: edge/guesses.py limits them)."""
        digest = hashlib.sha256(secret.encode()).hexdigest()
        key = self._minted.get(digest) or self._env.get(digest) or self._fresh(digest)
        if key is None or self._is_admin(secret):
            return None
        return key

    def _fresh(self, digest: str) -> Key | None:
        try:
            row = self.store.by_hash(digest)
        except StateUnavailable:
            return None
        if row is None or row["revoked"] is not None:
            return None
        key = self._minted[digest] = self._key(row)
        return key

    def name_of(self, key_id: str) -> str | None:
        """The name of the live key `key_id` (None when there is none)."""
        return next((k.name for k in (*self._minted.values(), *self._env.values()) if k.id == key_id), None)

    # -- the owner's side (admin token checked by the route) ---------------------------------
    def mint(self, name: str, rpm: int | None = None, streams: int | None = None,
             weight: float | None = None) -> dict[str, Any]:
        secret = "obk_" + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(6)
        row = self.store.add(key_id, name, secret, rpm, streams, weight)
        self._load()
        self._state.publish("keys_changed", key_id=key_id)
        log.info("API key %s (%r) minted", key_id, name)
        return {**self._describe(row), "key": secret}

    def list(self) -> list[dict[str, Any]]:
        env = [{"id": k.id, "name": k.name, "source": "env", "prefix": None, "created": None, "rpm": None,
                "streams": None, "weight": 1.0} for k in self._env.values()]
        return env + [self._describe(row) for row in self.store.live()]

    def revoke(self, key_id: str) -> dict[str, Any]:
        row = self.store.get(key_id)
        if row is None or row.get("revoked"):
            if any(k.id == key_id for k in self._env.values()):
                raise GatewayError(f"'{key_id}' comes from OLLABRIDGE_API_KEYS; remove it there.", status=409,
                                   code="key_from_environment")
            raise KeyNotFound(f"No live API key has the id '{key_id}'.")
        self.store.revoke(key_id)
        self._load()
        self._state.publish("keys_changed", key_id=key_id)
        log.info("API key %s (%r) revoked", key_id, row["name"])
        return {"id": key_id, "name": row["name"], "revoked": True, "api_open": not self.enabled}

    @staticmethod
    def _describe(row: dict[str, Any]) -> dict[str, Any]:
        return {"id": row["key_id"], "name": row["name"], "source": "minted", "prefix": row["prefix"],
                "created": iso(row["created"]), "rpm": row["rpm"], "streams": row["streams"],
                "weight": row["weight"] or 1.0}
