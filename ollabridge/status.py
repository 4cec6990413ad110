"""What `/health`, `/ollama/status` and the web UI's Status tab show: one service for all three.

Open to anyone, so nothing secret: every URL in them has its credentials hidden (`redact`), and GPU
nodes are counted (`relay`), not listed (the owner lists them at `/device/nodes`, with the admin token).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from ollabridge import __version__

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


def redact(value: Any) -> Any:
    """`value` with the credentials of every URL in it (in any string, at any depth) hidden:
    `http://user:pass@host:11434` becomes `http://***@host:11434`."""
    if isinstance(value, str):
        return _USERINFO.sub(r"\1***@", value) if "@" in value else value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


class StatusViews:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.started_at = time.time()

    def relay(self) -> dict[str, Any]:
        return self.gateway.hub.stats()

    async def health(self) -> dict[str, Any]:
        """ok or degraded, each backend with its models, the engine, the relay, the streams resumed
        and stalls noticed, and the pulls."""
        gw = self.gateway
        backends = gw.router.backends
        checks = await asyncio.gather(*(b.health() for b in backends))
        await gw.router.refresh()
        # A backend that just came up (or went down) gets its model list now, not after the TTL.
        changed = [b for b, check in zip(backends, checks) if check.ok != b.reachable]
        await asyncio.gather(*(b.models(0) for b in changed))
        entries = [{**backend.describe(), "healthy": check.ok, "detail": check.detail}
                   for backend, check in zip(backends, checks)]
        status = "ok" if entries and all(e["healthy"] for e in entries) else "degraded"
        answer = {"status": status, "version": __version__,
                  "uptime_s": round(time.time() - self.started_at, 1), "engine": gw.engine.info(),
                  "backends": entries, "relay": self.relay(), "streams": gw.router.stream_stats(),
                  "pulls": gw.puller.snapshot()}
        if getattr(gw, "presence", None) is not None:  # several replicas: each one seen and the nodes it holds
            answer["replicas"] = gw.presence.snapshot()
        return redact(answer)

    def _remote_nodes(self) -> list[dict[str, Any]]:
        presence = getattr(self.gateway, "presence", None)
        return presence.remote_nodes() if presence is not None else []

    async def status(self, nodes: bool = True) -> dict[str, Any]:
        """The gateway's Ollama (reachable, version, pulled and loaded models), engine, upstreams, and
        the relay's counts; with `nodes` (the web UI, in process) each connected node's live figures."""
        gw = self.gateway
        health, version, loaded = await asyncio.gather(gw.ollama.health(), gw.ollama.ollama_version(), gw.ollama.loaded())
        models = await gw.ollama.models(gw.settings.models_ttl)
        relay = {**self.relay(), "nodes": gw.hub.nodes_status() + self._remote_nodes()} if nodes else self.relay()
        return redact({"ollama": {"reachable": health.ok, "url": gw.settings.ollama_base_url, "version": version,
                                  "detail": health.detail,
                                  "models": [m.get("name") for m in models],
                                  "loaded": [m.get("name") for m in loaded]},
                       "engine": gw.engine.info(),
                       "pulls": gw.puller.snapshot(),
                       "upstreams": [u.describe() for u in gw.upstreams],
                       "relay": relay})
