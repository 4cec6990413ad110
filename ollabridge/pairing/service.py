"""The device flow (RFC 8628) that lets the gateway's owner approve a GPU node by a short code.

See the package docstring (`ollabridge.pairing`) for the methods the API and the web UI call.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ollabridge.edge.guesses import Guesses
from ollabridge.errors import GatewayError
from ollabridge.store import open_state
from ollabridge.store.base import StateUnavailable
from ollabridge.store.sqlite import OpensStore, iso

log = logging.getLogger("ollabridge.pairing")

ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels (no words), no look-alikes of digits
CODE_LENGTH = 8


# -- errors the API and the UI show ------------------------------------------------------------
class PairingError(GatewayError):
    """A pairing action that cannot be done; `str(exc)` is a sentence a person can read."""

    status = 400
    type = "invalid_request_error"
    code = "pairing_error"

    def __str__(self) -> str:
        return self.message


class CodeNotFound(PairingError):
    status = 404
    code = "code_not_found"


class CodeExpired(PairingError):
    status = 410
    code = "code_expired"


class CodeUsed(PairingError):
    status = 409
    code = "code_used"


class AdminRequired(PairingError):
    status = 401
    type = "authentication_error"
    code = "admin_token_required"


class NodeNotFound(PairingError):
    status = 404
    code = "node_not_found"


class RateLimited(PairingError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class DeviceFlowError(Exception):
    """What `/device/token` answers before it hands out a token (RFC 8628 section 3.5)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class NodeAuthError(Exception):
    """A relay connection whose token does not let it in; `close_code` is 4401 or 4403."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


# -- the flow ------------------------------------------------------------------------------------
@dataclass
class _Pending:
    device_code: str
    user_code: str  # normalized: 8 letters, no dash
    name: str
    client: str
    offers: dict[str, Any]
    created: float
    expires_at: float
    interval: float
    status: str = "pending"  # pending | approved | denied | delivered
    node_id: str = ""
    last_poll: float = 0.0
    decided_at: float = 0.0


def format_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def normalize_code(user_code: str) -> str:
    """`bcdf-ghjk`, `BCDFGHJK` and ` bcdf ghjk ` are the same code."""
    return "".join(ch for ch in str(user_code).upper() if ch.isalnum())



def _short_offers(offers: dict[str, Any]) -> dict[str, Any]:
    caps = offers.get("capabilities") if isinstance(offers.get("capabilities"), dict) else {}
    models = offers.get("models") if isinstance(offers.get("models"), list) else []
    names = [m.get("name") or m.get("model") if isinstance(m, dict) else str(m) for m in models][:50]
    return {"models": [str(n)[:200] for n in names if n], "gpu": caps.get("gpu"),
            "vram_mb": caps.get("vram_mb"), "slots": caps.get("slots"), "agent": offers.get("agent")}


class PairingService(OpensStore[Any]):
    def __init__(self, data_dir: str | Path, admin_token: str = "", public_url: str = "", *,
                 expires_in: int = 600, interval: float = 5, max_pending: int = 50,
                 starts_per_minute: int = 10, guesses: Guesses | None = None, state: Any = None) -> None:
        self.data_dir = Path(data_dir)
        #: Paired nodes, pending codes and the generated admin token (ollabridge/store: open_state).
        self._state = state if state is not None else open_state(self.data_dir)
        self._owns_state = state is None
        # On a Hugging Face Space, SPACE_HOST names the public host (the proxy hides the scheme).
        space = os.environ.get("SPACE_HOST", "").split(",")[0].strip()
        self.public_url = (public_url or (f"https://{space}" if space else "")).rstrip("/")
        self.expires_in = expires_in
        self.interval = interval
        self.max_pending = max_pending
        self.starts_per_minute = starts_per_minute
        #: Wrong admin tokens and device codes per client address (shared with the API keys' check).
        self.guesses = guesses if guesses is not None else Guesses()
        self._env_admin = admin_token
        self._admin: str | None = None
        self.admin_source = "env" if admin_token else "file"
        self._store: Any = None
        self._lock = threading.RLock()
        self._codes = self._state.codes()  # pending device codes, by device_code and by user_code
        self._starts: dict[str, deque[float]] = {}
        #: The relay hub (set by the gateway): gives live state and closes revoked nodes' sockets.
        self.hub: Any = None
        #: Called with a node_id after it is revoked (besides the hub's kick).
        self.on_revoke: list[Callable[[str], None]] = []

    # -- life --------------------------------------------------------------------------------
    def open(self) -> None:
        """Get the store and load (or create and log once) the admin token."""
        with self._lock:
            if self._store is None:
                self._store = self._state.nodes()
                self._state.subscribe("node_revoked", lambda event: self._revoked(event["node_id"]))
            if self._admin is None:
                try:
                    self._admin = self._env_admin or self._generated_admin_token()
                except StateUnavailable as exc:  # asked again at the next admin check
                    log.warning("admin token not read (%s): admin actions are refused until it is", exc)

    def _generated_admin_token(self) -> str:
        token, created = self._state.admin_token()
        where = self._state.where()
        if not created:
            log.info("admin token: kept in %s (set OLLABRIDGE_ADMIN_TOKEN to choose your own)", where)
            return token
        bar = "=" * 72
        log.warning("\n%s\nOLLABRIDGE ADMIN TOKEN (generated now; shown only this once):\n\n    %s\n\n"
                    "It approves GPU nodes. Kept in %s (owner-only).\nSet OLLABRIDGE_ADMIN_TOKEN "
                    "(a Space secret) to choose your own.\n%s", bar, token, where, bar)
        return token

    # -- admin ---------------------------------------------------------------------------------
    @property
    def admin_token(self) -> str:
        """The owner's admin token (from OLLABRIDGE_ADMIN_TOKEN or the data dir); opens the store."""
        if self._admin is None:
            self.open()
        return self._admin or ""

    def is_admin(self, token: str | None) -> bool:
        if self._admin is None:
            self.open()
        return bool(token) and bool(self._admin) and hmac.compare_digest(str(token).encode(),
                                                                          self._admin.encode())

    def check_admin(self, token: str | None, client: str = "") -> None:
        """Raise AdminRequired unless `token` is the owner's admin token; a wrong one counts against the
        caller's address `client` (TooManyGuesses, 429, past the limit: edge/guesses.py)."""
        if not token:
            raise AdminRequired("The admin token is required to do this (OLLABRIDGE_ADMIN_TOKEN, or the "
                                "token printed in the gateway's log at first boot).")
        if not self.guesses.guard(client, self.is_admin(token)):
            raise AdminRequired("That admin token is wrong.")

    # -- the device's side ---------------------------------------------------------------------
    def start(self, name: str = "", client: str = "", offers: dict[str, Any] | None = None,
              base_url: str = "") -> dict[str, Any]:
        """Begin pairing a device: the RFC 8628 device authorization response."""
        now = time.time()
        with self._lock:
            self._purge(now)
            self._limit(client, now)
            live = sum(1 for p in self._codes.waiting() if p["expires_at"] > now)
            if live >= self.max_pending:
                raise RateLimited(f"Too many pairing codes are waiting for approval ({live}); try again "
                                  "in a few minutes.", headers={"Retry-After": "60"})
            while True:
                user_code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
                pending = _Pending(device_code=secrets.token_urlsafe(32), user_code=user_code,
                                   name=(name or "gpu-node").strip()[:64] or "gpu-node", client=client,
                                   offers=_short_offers(offers or {}), created=now,
                                   expires_at=now + self.expires_in, interval=self.interval)
                if self._codes.add(asdict(pending)):  # False: that user code is taken
                    break
        base = self.base_url(base_url)
        shown = format_code(user_code)
        log.info("pairing code %s issued for %r from %s", shown, pending.name, client or "?")
        return {"device_code": pending.device_code, "user_code": shown,
                "verification_uri": f"{base}/",
                "verification_uri_complete": f"{base}/?user_code={shown}",
                "expires_in": self.expires_in, "interval": self.interval}

    def poll(self, device_code: str, base_url: str = "", client: str = "") -> dict[str, Any]:
        """The device asks whether it was approved: returns `{node_id, node_token, relay_url}` once,
        else raises DeviceFlowError with the RFC error code. An unknown code counts against the caller's
        address `client` as a wrong guess (TooManyGuesses past the limit)."""
        now = time.time()
        with self._lock:
            record = self._codes.get(str(device_code or ""))
            pending = _Pending(**record) if record else None
            if not self.guesses.guard(client, pending is not None):
                raise DeviceFlowError("invalid_grant", "Unknown device_code; start pairing again.")
            if pending.status == "delivered":
                raise DeviceFlowError("invalid_grant", "This device_code was already used.")
            if pending.status == "denied":
                raise DeviceFlowError("access_denied", "The owner denied this pairing request.")
            if now >= pending.expires_at and pending.status == "pending":
                raise DeviceFlowError("expired_token", "The code expired before it was approved; "
                                                       "start pairing again.")
            if pending.status == "pending":
                too_soon = now - pending.last_poll < pending.interval * 0.8
                self._codes.update(pending.device_code, last_poll=now)
                if too_soon:
                    pending.interval += 5
                    self._codes.update(pending.device_code, interval=pending.interval)
                    raise DeviceFlowError("slow_down", f"Polling too fast; wait {pending.interval:g}s "
                                                       "between requests.")
                raise DeviceFlowError("authorization_pending", "Waiting for the owner to approve the code.")
            # approved: hand out the token, exactly once (whichever replica is polled first)
            if not self._codes.move(pending.device_code, "approved", status="delivered"):
                raise DeviceFlowError("invalid_grant", "This device_code was already used.")
            token = "obn_" + secrets.token_urlsafe(32)
            self.store.add(pending.node_id, pending.name, token, approved_from=pending.client)
            if pending.offers.get("models") or pending.offers.get("gpu"):
                self.store.seen(pending.node_id, agent=pending.offers.get("agent") or "",
                                models=pending.offers.get("models") or [],
                                capabilities={k: pending.offers.get(k) for k in ("gpu", "vram_mb", "slots")})
        log.info("node %s (%r) paired", pending.node_id, pending.name)
        return {"node_id": pending.node_id, "node_token": token, "relay_url": self.relay_url(base_url)}

    # -- the owner's side ----------------------------------------------------------------------
    def lookup(self, user_code: str) -> dict[str, Any]:
        """What a code is for: `{user_code, name, client, status, expires_in, models, gpu, vram_mb,
        slots, agent}`. Raises CodeNotFound / CodeExpired / CodeUsed."""
        with self._lock:
            pending = self._find(user_code)
            return self._describe(pending)

    def pending(self) -> list[dict[str, Any]]:
        """Codes waiting for a decision, newest first."""
        now = time.time()
        with self._lock:
            self._purge(now)
            waiting = [_Pending(**r) for r in self._codes.waiting() if r["expires_at"] > now]
            return [self._describe(p) for p in sorted(waiting, key=lambda p: -p.created)]

    def approve(self, user_code: str, admin_token: str | None, client: str = "") -> dict[str, Any]:
        """Let the device in; returns `{node_id, name, user_code}`. The device picks up its token
        on its next poll."""
        self.check_admin(admin_token, client)
        with self._lock:
            pending = self._find(user_code)
            node_id = "node_" + secrets.token_hex(6)
            if not self._codes.move(pending.device_code, "pending", status="approved", decided_at=time.time(),
                                    node_id=node_id):
                self._find(user_code)  # decided meanwhile (on another replica): says how
            pending.node_id = node_id
            log.info("pairing code %s approved: node %s (%r)", format_code(pending.user_code),
                     pending.node_id, pending.name)
            return {"node_id": pending.node_id, "name": pending.name,
                    "user_code": format_code(pending.user_code)}

    def deny(self, user_code: str, admin_token: str | None, client: str = "") -> dict[str, Any]:
        """Refuse the device; its next poll answers `access_denied`."""
        self.check_admin(admin_token, client)
        with self._lock:
            pending = self._find(user_code)
            if not self._codes.move(pending.device_code, "pending", status="denied", decided_at=time.time()):
                self._find(user_code)
            log.info("pairing code %s denied", format_code(pending.user_code))
            return {"name": pending.name, "user_code": format_code(pending.user_code), "denied": True}

    def nodes(self) -> list[dict[str, Any]]:
        """Paired (not revoked) nodes: `{node_id, name, created, last_seen, connected, models, gpu,
        vram_mb, slots, in_flight, agent}`; live values from the hub when the node is connected."""
        out = []
        for row in self.store.list():
            live = self.hub.live_info(row["node_id"]) if self.hub is not None else None
            caps = row.get("capabilities") or {}
            models = row.get("models") or []
            entry = {"node_id": row["node_id"], "name": row["name"], "created": iso(row["created"]),
                     "last_seen": iso(row.get("last_seen")), "connected": live is not None,
                     "models": [m.get("name") or m.get("model") if isinstance(m, dict) else m for m in models],
                     "gpu": caps.get("gpu"), "vram_mb": caps.get("vram_mb"), "slots": caps.get("slots"),
                     "in_flight": 0, "agent": row.get("agent")}
            if live:
                entry.update(live)
                entry["last_seen"] = iso(time.time())
            out.append(entry)
        return out

    def revoke(self, node_id: str, admin_token: str | None, client: str = "") -> dict[str, Any]:
        """Revoke a node: its token never works again and its live socket closes (code 4403)."""
        self.check_admin(admin_token, client)
        row = self.store.get(node_id)
        if row is None or row.get("revoked"):
            raise NodeNotFound(f"No paired node has the id '{node_id}'.")
        self.store.revoke(node_id)
        log.info("node %s (%r) revoked", node_id, row["name"])
        self._revoked(node_id)
        self._state.publish("node_revoked", node_id=node_id)  # the replica holding its socket closes it
        return {"node_id": node_id, "name": row["name"], "revoked": True}

    def _revoked(self, node_id: str) -> None:
        """A node was revoked here or on another replica: close its socket if it is on this one."""
        if self.hub is not None:
            self.hub.kick(node_id, 4403, "revoked by the owner")
        for callback in self.on_revoke:
            callback(node_id)

    # -- the relay's side ----------------------------------------------------------------------
    def authenticate(self, node_token: str | None) -> dict[str, Any]:
        """The stored node for a relay token; NodeAuthError(4401 unknown, 4403 revoked) otherwise."""
        if not node_token:
            raise NodeAuthError(4401, "missing node token")
        row = self.store.by_token(node_token)
        if row is None:
            raise NodeAuthError(4401, "bad node token")
        if row.get("revoked"):
            raise NodeAuthError(4403, "node revoked")
        return row

    # -- helpers -------------------------------------------------------------------------------
    def base_url(self, request_base: str = "") -> str:
        return (self.public_url or request_base or "http://127.0.0.1:7860").rstrip("/")

    def relay_url(self, request_base: str = "") -> str:
        base = self.base_url(request_base)
        if base.startswith("https://"):
            base = "wss://" + base[len("https://"):]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://"):]
        return f"{base}/relay/connect"

    def _find(self, user_code: str) -> _Pending:
        code = normalize_code(user_code)
        record = self._codes.by_user(code) if len(code) == CODE_LENGTH else None
        pending = _Pending(**record) if record else None
        if pending is None:
            if len(code) != CODE_LENGTH or any(ch not in ALPHABET for ch in code):
                raise CodeNotFound(f"'{user_code}' is not a pairing code: codes are 8 letters like "
                                   "BCDF-GHJK.")
            raise CodeNotFound(f"No device is waiting with the code {format_code(code)}. Check it, or "
                               "start pairing again on the device.")
        if pending.status != "pending":
            what = {"approved": "was already approved", "delivered": "was already used",
                    "denied": "was denied"}[pending.status]
            raise CodeUsed(f"The code {format_code(code)} {what}.")
        if time.time() >= pending.expires_at:
            raise CodeExpired(f"The code {format_code(code)} expired; start pairing again on the device.")
        return pending

    def _describe(self, p: _Pending) -> dict[str, Any]:
        now = time.time()
        status = "expired" if p.status == "pending" and now >= p.expires_at else p.status
        return {"user_code": format_code(p.user_code), "name": p.name, "client": p.client, "status": status,
                "created": iso(p.created), "expires_in": max(0, int(p.expires_at - now)), **p.offers}

    def _limit(self, client: str, now: float) -> None:
        if self.starts_per_minute <= 0:
            return
        window = self._starts.setdefault(client, deque())
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) >= self.starts_per_minute:
            retry = max(1, int(60 - (now - window[0])) + 1)
            raise RateLimited(f"Too many pairing requests from this address; try again in {retry}s.",
                              headers={"Retry-After": str(retry)})
        window.append(now)

    def _purge(self, now: float) -> None:
        # Pending codes forget themselves (10 minutes after they expired or were decided).
        for client, window in list(self._starts.items()):
            while window and now - window[0] > 60:
                window.popleft()
            if not window:
                del self._starts[client]
