"""Pure helpers for Ollama's native answers: data in, data out, no I/O.

Native requests pass through as sent (the backends speak Ollama's API), so little is converted:
the router's model entries carry the gateway's own `ollabridge` note, which `/api/tags` leaves out.
"""

from __future__ import annotations

from typing import Any, Iterable


def tags_response(models: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The router's model union as Ollama's `GET /api/tags` body."""
    return {"models": [{k: v for k, v in m.items() if k != "ollabridge"} for m in models]}
