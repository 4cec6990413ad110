"""`WS /relay/connect`: where paired GPU nodes dial in (protocol in docs/relay-protocol.md)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

router = APIRouter(tags=["Device relay"])


@router.websocket("/relay/connect")
async def relay_connect(websocket: WebSocket) -> None:
    """A node connects with `Authorization: Bearer <node_token>` and says `hello`."""
    await websocket.app.state.gateway.hub.handle(websocket)
