"""How long the node waits before trying the gateway again: 1, 2, 4, ... up to 60 s, with jitter."""

from __future__ import annotations

import random

BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0


def delay(attempt: int) -> float:
    """Seconds before try `attempt + 1`: between half and all of min(60, 2 ** attempt)."""
    top = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt)
    return random.uniform(top / 2, top)
