"""Pure helpers for Ollama's native answers: data in, data out, no I/O.

Native requests pass through as sent (the backends speak Ollama's API), so little is converted:
the router's model entries carry the gateway's own `ollabridge` note, which `/api/tags` leaves out.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

_VERSION = re.compile(r"v?(\d+(?:\.\d+){0,2})")


def tags_response(models: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The router's model union as Ollama's `GET /api/tags` body."""
    return {"models": [{k: v for k, v in m.items() if k != "ollabridge"} for m in models]}


def lowest_version(versions: Iterable[str | None]) -> str | None:
    """The lowest of the backends' Ollama versions, as dotted integers only (`0.6.0+x` → `0.6.0`):
    Open WebUI compares them as integer tuples and fails on anything else."""
    found = []
    for version in versions:
        match = _VERSION.match(version or "")
        if match:
            found.append(tuple(int(part) for part in match.group(1).split(".")))
    return ".".join(str(part) for part in min(found)) if found else None
