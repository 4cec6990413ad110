"""Fast JSON for the hot path: orjson, with the stdlib for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson

loads = orjson.loads
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON bytes (orjson refuses ints over 64 bits and non-str keys: stdlib then)."""
    try:
        return orjson.dumps(obj, default=str)
    except TypeError:
        return _encode(obj).encode()
