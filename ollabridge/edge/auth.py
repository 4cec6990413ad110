"""Credentials on a request: the bearer token of an `Authorization` header, and which API key a
request carries (`Authorization: Bearer <key>` or `X-API-Key: <key>`)."""

from __future__ import annotations


def bearer(value: str | bytes | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive), else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def api_key(authorization: str | bytes | None, x_api_key: str | bytes | None) -> str | None:
    """The API key a request carries: its bearer token, else its `X-API-Key` header."""
    secret = bearer(authorization)
    if secret is None and x_api_key is not None:
        if isinstance(x_api_key, bytes):
            x_api_key = x_api_key.decode("latin-1")
        secret = x_api_key.strip() or None
    return secret
