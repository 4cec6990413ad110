"""What `/health`, `/ollama/status` and the web UI's Status tab show: one service for all three.

Open to anyone, so nothing secret: every URL in them has its credentials hidden (`redact`), GPU
nodes are counted (`relay`), not listed (the owner lists them at `/device/nodes`, with the admin token),
and the callers waiting in the queue are named by their API key's name, or by a hash of their address
(`caller_label`), never by the address itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from typing import Any, Callable

from ollabridge import __version__
from ollabridge.edge.context import LOOPBACK

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


#: Callers shown by name in the queue per caller, the most waiting first; the rest are summed as "other".
MAX_CALLERS = 20
# Addresses are hashed with a key of this process: the same caller keeps its label until a restart, and
# no table of every address's hash can be made to undo it.
_ADDRESS_KEY = secrets.token_bytes(16)


def caller_label(ident: str, key_name: Callable[[str], str | None]) -> str:
    """How a caller in the queue is shown: `key:<its name>` (API key), `local` (this machine), or
    `client-<hash of the address>`; `ident` is the edge's `key:<id>` or `ip:<address>`."""
    kind, _, value = ident.partition(":")
    if kind == "key":
        return "key:" + (key_name(value) or value)[:64]
    if kind == "ip" and value:
        if value.startswith(LOOPBACK):
            return "local"
        return "client-" + hmac.new(_ADDRESS_KEY, value.encode(), hashlib.sha256).hexdigest()[:10]
    return "unknown"


def queue_by_caller(waiting: dict[str, int], key_name: Callable[[str], str | None],
                    limit: int = MAX_CALLERS) -> dict[str, int]:
    """The requests waiting, by caller label (`caller_label`), the most first; past `limit` labels the
    rest are summed under "other"."""
    labelled: dict[str, int] = {}
    for ident, n in waiting.items():
        label = caller_label(ident, key_name)
        labelled[label] = labelled.get(label, 0) + n
    ranked = sorted(labelled.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = dict(ranked[:limit])
    if len(ranked) > limit:
        shown["other"] = shown.get("other", 0) + sum(n for _, n in ranked[limit:])
    return shown


class StatusViews:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.started_at = time.time()

    def relay(self) -> dict[str, Any]:
        return self.gateway.hub.stats()

    def queue(self) -> dict[str, Any]:
        """The requests waiting for a slot: in all, at most, and by caller (`queue_by_caller`)."""
        router = self.gateway.router
        return {"waiting": router.waiting, "max": router.slots.max_queue,
                "by_caller": queue_by_caller(router.waiting_by_caller(), self.gateway.keys.name_of)}

    def load(self) -> dict[str, Any]:
        """What is being served now: API requests in flight, the queue, the streams' counts (resumes,
        stall probes, and whatever else the router counts)."""
        gw = self.gateway
        return {"requests_in_flight": len(gw.drain.inflight), "queue": self.queue(),
                "streams": gw.router.stream_stats()}

    def history(self) -> dict[str, Any]:
        """The last 15 minutes, a sample every few seconds: tokens/s per backend, requests in flight,
        requests queued (ollabridge/stats_history.py)."""
        history = self.gateway.history
        return {"period_s": history.period, "window_s": history.window,
                "samples": [s.as_dict() for s in history.recent()]}

    async def health(self) -> dict[str, Any]:
        """ok or degraded, each backend with its models and measured speed, the engine, the relay, the
        requests in flight, the queue per caller, the streams resumed and stalls noticed, the pulls, and
        the shared state (`redis`: None, or its url, whether it is connected and why not; degraded while
        it is not)."""
        gw = self.gateway
        backends = gw.router.backends
        checks = await asyncio.gather(*(b.health() for b in backends))
        await gw.router.refresh()
        # A backend that just came up (or went down) gets its model list now, not after the TTL.
        changed = [b for b, check in zip(backends, checks) if check.ok != b.reachable]
        await asyncio.gather(*(b.models(0) for b in changed))
        entries = [{**backend.describe(), "healthy": check.ok, "detail": check.detail}
                   for backend, check in zip(backends, checks)]
        shared = gw.state.health()
        redis_down = shared.get("redis") is not None and not shared["redis"]["connected"]
        status = "ok" if entries and all(e["healthy"] for e in entries) and not redis_down else "degraded"
        answer = {"status": status, "version": __version__,
                  "uptime_s": round(time.time() - self.started_at, 1), "engine": gw.engine.info(),
                  "backends": entries, "relay": self.relay(), **self.load(),
                  "pulls": gw.puller.snapshot(), "shared_state": shared}
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
