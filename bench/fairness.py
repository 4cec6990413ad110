"""Fairness of the router's queue, in process (issue 14): one 1-slot backend, caller A queues
`--queued` requests, then caller B sends one. B's wait, in A's request durations; target ≤ 2.

    python bench/fairness.py                     # 20 queued, 50 ms per request
    python bench/fairness.py --queued 50 --duration 0.02

The backend is scripted (each answer takes `--duration` s); the figure is the router's choice of
whom to serve next, not a network's. The same run with both callers as one (the queue as it was
before callers: first come, first served) is printed for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ollabridge.backends.base import Backend, BackendHealth  # noqa: E402
from ollabridge.routing import Router  # noqa: E402


class OneSlot(Backend):
    def __init__(self, duration: float) -> None:
        super().__init__("node", slots=1)
        self.duration = duration
        self._models = [{"name": "m", "model": "m"}]
        self._models_at = time.monotonic()
        self.reachable = True

    async def stream(self, op: str, body: dict[str, Any]):
        await asyncio.sleep(self.duration)  # the scripted answer's length
        yield {"model": "m", "message": {"role": "assistant", "content": "x"}, "done": True, "eval_count": 1}

    async def call(self, op, body):
        return {}

    async def fetch_models(self):
        return self._models

    async def health(self):
        return BackendHealth(True)


async def run(queued: int, duration: float, fair: bool) -> float:
    router = Router(queue_timeout=queued * duration * 10 + 10, max_queue=queued + 8)
    router.add(OneSlot(duration))

    async def ask(caller: str) -> float:
        t0 = time.monotonic()
        async for _ in router.chat({"model": "m", "messages": []}, {"caller": caller}):
            pass
        return time.monotonic() - t0

    a = [asyncio.create_task(ask("key:A")) for _ in range(queued + 1)]  # one running, `queued` waiting
    while router.waiting < queued:
        await asyncio.sleep(0)
    b = await ask("key:B" if fair else "key:A")
    await asyncio.gather(*a)
    await router.close()
    return b / duration - 1  # the wait: B's time less its own answer's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queued", type=int, default=20)
    ap.add_argument("--duration", type=float, default=0.05)
    args = ap.parse_args()
    fair = asyncio.run(run(args.queued, args.duration, True))
    fifo = asyncio.run(run(args.queued, args.duration, False))
    print(f"A queued {args.queued}, B sends 1 ({args.duration * 1000:g} ms each): B waited {fair:.2f} of A's "
          f"request durations (target <= 2); as one caller (first come, first served): {fifo:.2f}")


if __name__ == "__main__":
    main()
