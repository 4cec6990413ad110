"""What every implementation of the shared state offers (`open_state` in this package picks one).

Records are plain dicts, shaped like the SQLite rows (`None` for an unset column):

- keys: `add(key_id, name, secret, rpm, streams, weight) -> row`, `get(key_id)`, `by_hash(sha256)`,
  `live()`, `revoke(key_id) -> bool`; a row has key_id, name, key_hash, prefix, created, revoked, rpm, streams,
  weight.
- nodes: `add(node_id, name, token, approved_from)`, `by_token(token)` (revoked ones too), `get(node_id)`,
  `list(include_revoked=False)`, `seen(node_id, agent=, models=, capabilities=)`, `revoke(node_id) -> bool`.
- codes (pending device codes): `add(record) -> bool` (False: its user_code is taken), `get(device_code)`,
  `by_user(user_code)`, `waiting()`, `update(device_code, **fields)`, and
  `move(device_code, from_status, **fields) -> bool`: the one atomic step of the flow (approve, deny,
  deliver the token), so two replicas can never both hand out a node's token.
- `admin_token(make) -> (token, created)`: the generated admin token, made by `make()` the first time;
  `where()` says where it is kept (for the log).
- `budget`: None (each replica limits alone) or a shared rate budget with `async take(ident, rpm) -> int`.
- `ledger`: None or a shared count of wrong secrets with `wrong(client, limit, lockout) -> (state, s)`.
- `publish(kind, **data)` tells the other replicas; `subscribe(kind, callback)` hears them (never its own).
  The kind "resync" is heard after the connection to the shared state came back: reload caches.
- `health() -> dict` for `/health`'s `shared_state`; `close()`.
"""

from __future__ import annotations

from ollabridge.errors import GatewayError


class StateUnavailable(GatewayError):
    """The shared state (Redis) cannot be reached: what needs it answers 503 until it is back."""

    status = 503
    type = "api_error"
    code = "shared_state_unavailable"
