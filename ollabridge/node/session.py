"""One WebSocket connection to the gateway, from `hello` to close.

`Session.run` dials the relay with the node's token, says hello (name, models, capabilities),
waits for `welcome` (heartbeat, credit window, frame limit), then runs four tasks until one ends:
the reader (dispatches `req`, `cancel`, `credit`, `ping`, `goaway`), the writer (the one place
that sends), the heartbeat (pings; 3 silent beats end the session) and the model-list watch.
It returns `(welcomed, close code, reason)`; the agent decides what comes next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ollabridge.node import AGENT
from ollabridge.node.banner import say
from ollabridge.node.credentials import relay_url
from ollabridge.node.ollama import LocalOllama
from ollabridge.node.serving import Requests
from ollabridge.relay import protocol as p

log = logging.getLogger("ollabridge.node")


@dataclass(eq=False)
class Session:
    """What one connection needs (the agent's settings) and keeps; `run` it once."""

    cloud: str
    name: str
    slots: int
    ollama: LocalOllama
    capabilities: dict[str, Any]
    models_interval: float
    goaway: bool = field(default=False, init=False)  # the gateway said it is shutting down: a planned restart
    _out: asyncio.Queue[str] = field(default_factory=asyncio.Queue, init=False, repr=False)
    _models_sig: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)

    async def run(self, token: str) -> tuple[bool, int | None, str]:
        """Connect, say hello, serve until the socket ends. Returns (welcomed, close code, reason)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        url = relay_url(self.cloud)
        welcomed = False
        requests: Requests | None = None
        try:
            async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                               user_agent_header=AGENT, max_size=64 * 1024 * 1024, ping_interval=None,
                               open_timeout=15, close_timeout=2) as ws:
                models = await self.ollama.models()
                self._models_sig = _signature(models)
                await ws.send(p.encode({"type": "hello", "protocol": p.PROTOCOL, "name": self.name, "agent": AGENT,
                                       "models": models, "capabilities": self.capabilities}))
                try:
                    raw = await asyncio.wait_for(ws.recv(), 20)
                except TimeoutError:
                    return False, None, "no welcome from the gateway"
                welcome = p.check_cloud_frame(p.parse(raw, 1 << 20, p.CLOUD_TYPES))
                if welcome["type"] != "welcome":
                    return False, None, f"expected welcome, got {welcome['type']}"
                welcomed = True
                beat = float(welcome.get("heartbeat_s") or 10)
                window = welcome.get("window")
                requests = Requests(self.ollama, self.slots, self._out,
                                    window if isinstance(window, int) and window > 0 else None,
                                    int(welcome.get("max_frame") or p.DEFAULT_MAX_FRAME))
                say(f"Connected to {self.cloud} as {welcome.get('node_id')} ({self.name}): "
                    f"{self.slots} slots, models: {', '.join(m['name'] for m in models) or 'none yet'}")
                await self._serve(ws, beat, requests)
                await ws.close()
                return True, ws.close_code, ws.close_reason or ""
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            reason = exc.rcvd.reason if exc.rcvd else "connection lost"
            return welcomed, code, reason or p.CLOSE_REASONS.get(code or 0, "")
        except InvalidStatus as exc:
            return False, None, f"HTTP {exc.response.status_code} from {url}"
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            return False, None, f"{type(exc).__name__}: {exc}"
        except p.ProtocolError as exc:
            return welcomed, None, f"protocol error: {exc}"
        finally:
            if requests is not None:
                await requests.cancel_all()

    async def _serve(self, ws: Any, beat: float, requests: Requests) -> None:
        last_rx = [time.monotonic()]

        async def reader() -> None:
            async for raw in ws:
                last_rx[0] = time.monotonic()
                frame = p.check_cloud_frame(p.parse(raw, 64 * 1024 * 1024, p.CLOUD_TYPES))
                kind = frame["type"]
                if kind == "req":
                    requests.start(frame)
                elif kind == "cancel":
                    requests.cancel(frame["id"])
                elif kind == "credit":
                    requests.credit(frame["id"], frame["n"])
                elif kind == "ping":
                    self._send({"type": "pong", "t": frame.get("t")})
                elif kind == "goaway":
                    # The gateway is shutting down: it finishes what is in flight, then closes (1012).
                    self.goaway = True
                    say(f"{self.cloud} is shutting down; finishing {len(requests)} request(s), "
                        "then reconnecting")

        async def writer() -> None:
            while True:
                await ws.send(await self._out.get())

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(beat)
                if time.monotonic() - last_rx[0] > 3 * beat:
                    log.warning("the gateway was silent for 3 heartbeats; reconnecting")
                    return
                self._send({"type": "ping", "t": time.time()})

        async def watch_models() -> None:
            while True:
                await asyncio.sleep(self.models_interval)
                models = await self.ollama.models()
                signature = _signature(models)
                if signature != self._models_sig:
                    self._models_sig = signature
                    say(f"Models changed: {', '.join(m['name'] for m in models) or 'none'}")
                    self._send({"type": "models", "models": models})

        tasks = [asyncio.create_task(t()) for t in (reader, writer, heartbeat, watch_models)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _send(self, frame: dict[str, Any]) -> None:
        self._out.put_nowait(p.encode(frame))


def _signature(models: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((m.get("name") or m.get("model") or "", m.get("digest") or "") for m in models)
