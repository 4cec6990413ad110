"""The credential one replica presents to another's internal endpoint.

Derived from the admin token every replica shares (OLLABRIDGE_ADMIN_TOKEN): an HMAC-SHA256 of a fixed
label, so the token itself never travels and a leaked replica credential is not an admin token.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-OllaBridge-Replica"
_LABEL = b"ollabridge replica forwarding v1"


def replica_token(admin_token: str) -> str:
    return hmac.new(admin_token.encode(), _LABEL, hashlib.sha256).hexdigest()


def valid(presented: str | None, admin_token: str) -> bool:
    """Whether `presented` is the replicas' credential (constant-time); never with no admin token."""
    if not presented or not admin_token:
        return False
    return hmac.compare_digest(presented.encode(), replica_token(admin_token).encode())
