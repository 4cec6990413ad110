"""Pairing GPU nodes by code: the RFC 8628 device flow and the store of paired nodes.

The gateway builds one `PairingService` (`gateway.pairing`); the `/device/*` routes and the
web UI's "Pair a device" tab both call it. Every method is synchronous and thread-safe (a UI
worker thread may call it), and finishes at once: paired nodes, pending codes and the generated
admin token are in the shared state (ollabridge/store: memory and a local SQLite file, or one Redis
for several replicas, where a code started on one replica is approved and polled on any). While
Redis is down what needs it raises `StateUnavailable` (503).

Methods for the owner (the API routes and the UI):

- `lookup(user_code) -> dict` - what a code is for, before approving it:
  `{user_code: "BCDF-GHJK", name, client, status: "pending", created, expires_in,
  models: [names], gpu, vram_mb, slots, agent}` (the node's offer as it sent it to
  `/device/start`; None/[] when it did not say). Codes are case-insensitive, dash optional.
- `pending() -> list[dict]` - codes waiting for a decision (same shape as `lookup`).
- `approve(user_code, admin_token, client) -> {node_id, name, user_code}` - the device gets its
  token on its next poll.
- `deny(user_code, admin_token, client) -> {name, user_code, denied: True}`.
- `nodes() -> list[dict]` - paired nodes: `{node_id, name, created, last_seen (ISO 8601 UTC),
  connected: bool, models: [names], gpu, vram_mb, slots, in_flight, agent}`, live when connected.
- `revoke(node_id, admin_token, client) -> {node_id, name, revoked: True}` - the token never
  works again and the node's live socket closes with 4403 within a second.
- `check_admin(token, client)` raises `AdminRequired`; `is_admin(token) -> bool`. `client` is the
  caller's address (the edge's, X-Forwarded-For per OLLABRIDGE_FORWARDED_HOPS): wrong tokens from
  it are limited (`guesses`, ollabridge/edge/guesses.py; `TooManyGuesses`, 429, past the limit).
- `admin_source` is "env" (OLLABRIDGE_ADMIN_TOKEN) or "file" (generated at first boot into
  `<data dir>/admin_token`, mode 0600, or into Redis for every replica; printed once in the log).

Errors are `PairingError` subclasses (also `ollabridge.errors.GatewayError`, so the API
renders them); `str(exc)` is a sentence to show as is:
`CodeNotFound` (404: wrong or malformed code), `CodeExpired` (410), `CodeUsed` (409: already
approved, used or denied), `AdminRequired` (401: missing or wrong admin token),
`NodeNotFound` (404), `RateLimited` (429, with `headers["Retry-After"]`).

Methods for the device and the relay: `start(name, client, offers, base_url)`,
`poll(device_code, base_url, client)` (raises `DeviceFlowError(error)` with the RFC 8628 error
code; an unknown code is a wrong guess of `client`'s),
`authenticate(node_token)` (raises `NodeAuthError(close_code)`).
"""

from ollabridge.pairing.service import (ALPHABET, AdminRequired, CodeExpired, CodeNotFound, CodeUsed,
                                        DeviceFlowError, NodeAuthError, NodeNotFound, PairingError,
                                        PairingService, RateLimited, format_code, normalize_code)

__all__ = ["ALPHABET", "AdminRequired", "CodeExpired", "CodeNotFound", "CodeUsed", "DeviceFlowError",
           "NodeAuthError", "NodeNotFound", "PairingError", "PairingService", "RateLimited", "format_code",
           "normalize_code"]
