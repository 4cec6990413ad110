"""What the API's edge (ollabridge/edge/) costs per request, in process, in microseconds.

    python bench/edge_cost.py [--n 20000]

Calls a trivial ASGI app (a 200 JSON answer) directly, then through EdgeMiddleware in several
configurations: open API from loopback (no limits), open API from a remote address (rate limits
on), with API keys (hash + lookup), and with the key's rate budget on a real redis-server on loopback
(OLLABRIDGE_REDIS_URL: one GCRA script call per request; skipped without Debian's redis-server), each
with its metrics and its log line (written to /dev/null through the logging module, as in production).
Prints the mean per request and the added cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ollabridge.edge.middleware import EdgeMiddleware  # noqa: E402
from ollabridge.config import Settings  # noqa: E402
from ollabridge.gateway import Gateway  # noqa: E402
from harness.redis import RedisServer  # noqa: E402

BODY = b'{"ok":true}'


async def app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": BODY})


async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message) -> None:
    return None


def scope(client: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "method": "GET", "path": "/v1/models", "headers": headers, "client": (client, 5555),
            "asgi": {"version": "3.0", "spec_version": "2.3"}}


async def timed(target, make_scope, n: int) -> float:
    for _ in range(500):
        await target(make_scope(), receive, send)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            await target(make_scope(), receive, send)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", stream=open(os.devnull, "w"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    headers = [(b"host", b"gw"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    results = {}
    key = {"OLLABRIDGE_API_KEYS": "sk-bench-1", "OLLABRIDGE_KEY_RATE_LIMIT_RPM": "100000000"}
    bearer = [(b"authorization", b"Bearer sk-bench-1")]
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start() if shutil.which("redis-server") else None
        shared = [("API key (Bearer), limits on Redis (loopback)", {**key, "OLLABRIDGE_REDIS_URL": redis.url},
                   "203.0.113.1", bearer)] if redis else []
        for name, env, client, extra in (
                ("open, loopback (no limits)", {}, "127.0.0.1", []),
                ("open, remote address (limits on)", {"OLLABRIDGE_RATE_LIMIT_RPM": "100000000"}, "203.0.113.1", []),
                ("API key (Bearer), limits on", key, "203.0.113.1", bearer), *shared):
            settings = Settings(OLLABRIDGE_DATA_DIR=f"{tmp}/{len(results)}", OLLABRIDGE_ADMIN_TOKEN="adm",
                                OLLABRIDGE_UI="0", **env)
            gateway = Gateway(settings)
            gateway.pairing.open()
            gateway.keys.open()
            edge = EdgeMiddleware(app, gateway)
            hdrs = headers + extra

            async def measure() -> tuple[float, float]:
                bare = await timed(app, lambda: scope(client, hdrs), args.n)
                wrapped = await timed(edge, lambda: scope(client, hdrs), args.n)
                return bare, wrapped

            bare, wrapped = asyncio.run(measure())
            results[name] = {"bare_us": round(bare, 2), "with_edge_us": round(wrapped, 2),
                             "added_us": round(wrapped - bare, 2)}
            assert sum(gateway.metrics.requests.values()) > args.n
            gateway.state.close()
        if redis:
            redis.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
