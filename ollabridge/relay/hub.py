"""The gateway's side of the relay: accepts node sockets (`WS /relay/connect`), keeps the connected
nodes, and joins each to the router as a `NodeBackend` (ollabridge/relay/node_backend.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from starlette.websockets import WebSocket

from ollabridge.edge.auth import bearer
from ollabridge.relay import protocol as p
from ollabridge.relay.node_backend import NodeBackend

log = logging.getLogger("ollabridge.relay")


class RelayHub:
    """Accepts node sockets, keeps the connected nodes, and joins them to the router."""

    def __init__(self, router: Any, pairing: Any, *, heartbeat_s: float = 10.0,
                 max_frame: int = p.DEFAULT_MAX_FRAME, window: int = p.DEFAULT_WINDOW,
                 first_token_timeout: float = 300.0, idle_timeout: float = 120.0,
                 hello_timeout: float = 10.0, release_timeout: float = 2.0) -> None:
        self.router = router
        self.pairing = pairing
        self.heartbeat_s = heartbeat_s
        self.max_frame = max_frame
        self.window = window
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.hello_timeout = hello_timeout
        # Seconds a cancelled request's slot stays busy when the node never confirms the cancel.
        self.release_timeout = release_timeout
        self.nodes: dict[str, NodeBackend] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.requests_total = 0
        self.requests_failed = 0
        self.requests_cancelled = 0
        self.tokens_relayed = 0
        # Called when a node joins, leaves or changes its models (replica presence publishes then).
        self.on_change: Callable[[], None] | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    def goaway(self, drain_s: float) -> None:
        """Tell nodes the gateway is shutting down: no new requests come on this socket, the ones
        in flight may finish within `drain_s`, then the socket closes (1012) and they reconnect."""
        for node in list(self.nodes.values()):
            if node.hello.goaway:
                node.send({"type": "goaway", "reason": "gateway shutting down", "drain_s": drain_s})

    async def stop(self, code: int = p.CLOSE_GOING_AWAY, reason: str = "gateway shutting down") -> None:
        for node in list(self.nodes.values()):
            node.close_soon(code, reason)
        await asyncio.gather(*(asyncio.wait_for(n.closed.wait(), 3) for n in list(self.nodes.values())),
                             return_exceptions=True)

    # -- statistics ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"nodes_connected": len(self.nodes),
                "requests_in_flight": sum(len(n._requests) + n.releasing for n in self.nodes.values()),
                "requests_total": self.requests_total, "requests_failed": self.requests_failed,
                "tokens_relayed": self.tokens_relayed}

    def nodes_status(self) -> list[dict[str, Any]]:
        return [n.info() for n in self.nodes.values()]

    def live_info(self, node_id: str) -> dict[str, Any] | None:
        node = self.nodes.get(node_id)
        if node is None:
            return None
        info = node.info()
        return {k: info[k] for k in ("models", "gpu", "vram_mb", "slots", "in_flight", "agent", "rtt_ms")}

    # -- control ---------------------------------------------------------------------------------
    def kick(self, node_id: str, code: int = p.CLOSE_REVOKED, reason: str = "revoked") -> None:
        """Close a node's live socket; callable from any thread (the UI may call from a worker)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self.loop is not None and running is not self.loop:
            self.loop.call_soon_threadsafe(self._kick, node_id, code, reason)
        else:
            self._kick(node_id, code, reason)

    def _kick(self, node_id: str, code: int, reason: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.close_soon(code, reason)
            self._leave(node)

    def models_changed(self, node: NodeBackend) -> None:
        log.info("node %s (%s) now serves: %s", node.node_id, node.name,
                 ", ".join(m["name"] for m in node._models) or "nothing")
        self._persist(node)
        self.router.notify()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _persist(self, node: NodeBackend) -> None:
        try:
            self.pairing.store.seen(node.node_id, agent=node.hello.agent,
                                    models=[m["name"] for m in node._models],
                                    capabilities=node.hello.capabilities)
        except Exception:  # noqa: BLE001 - bookkeeping must never break the relay
            log.exception("could not record node %s", node.node_id)

    def _leave(self, node: NodeBackend) -> None:
        if self.nodes.get(node.node_id) is node:
            del self.nodes[node.node_id]
        self.router.remove(node)
        self.router.notify()
        self._changed()

    # -- one socket ----------------------------------------------------------------------------------
    async def handle(self, ws: WebSocket) -> None:
        """Serve `WS /relay/connect` from accept to close."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        token = bearer(ws.headers.get("authorization"))
        await ws.accept()
        try:
            row = self.pairing.authenticate(token)
        except Exception as exc:  # NodeAuthError; anything else is the gateway's fault (1011)
            code = getattr(exc, "close_code", 1011)
            log.info("relay connection from %s refused: %s", ws.client.host if ws.client else "?", exc)
            await ws.close(code, p.close_reason(getattr(exc, "reason", str(exc))))
            return
        node_id = row["node_id"]
        try:
            async with asyncio.timeout(self.hello_timeout):
                message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") if message.get("text") is not None else message.get("bytes")
            hello = p.check_hello(p.parse(raw, self.max_frame))
        except TimeoutError:
            await ws.close(p.CLOSE_PROTOCOL_ERROR, f"no hello within {self.hello_timeout:g}s")
            return
        except p.ProtocolError as exc:
            log.info("node %s: %s", node_id, exc)
            await ws.close(exc.code, p.close_reason(str(exc)))
            return
        old = self.nodes.get(node_id)
        if old is not None:
            log.info("node %s reconnected; closing its previous socket", node_id)
            old.close_soon(p.CLOSE_REPLACED, p.CLOSE_REASONS[p.CLOSE_REPLACED])
            self._leave(old)
        if self.pairing.store.get(node_id) is None or self.pairing.store.get(node_id).get("revoked"):
            await ws.close(p.CLOSE_REVOKED, "node revoked")  # revoked while saying hello
            return
        node = NodeBackend(self, ws, node_id, hello)
        try:
            await ws.send_text(p.encode({"type": "welcome", "protocol": p.PROTOCOL, "node_id": node_id,
                                        "heartbeat_s": self.heartbeat_s, "window": self.window,
                                        "max_frame": self.max_frame}))
        except Exception:  # noqa: BLE001 - the node left during the handshake
            return
        self.nodes[node_id] = node
        self.router.add(node)
        self._persist(node)
        self._changed()
        log.info("node %s (%s) connected: %s, %d slots, models: %s", node_id, node.name,
                 hello.gpu or "no GPU reported", hello.slots, ", ".join(m["name"] for m in hello.models) or "none")
        try:
            await node.serve()
        finally:
            self._leave(node)
            try:
                self.pairing.store.seen(node_id)
            except Exception:  # noqa: BLE001
                pass
            code = node._close[0] if node._close else None
            log.info("node %s (%s) disconnected (%s)", node_id, node.name, code)
