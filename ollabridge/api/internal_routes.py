"""`POST /internal/nodes/{node_id}/api/{op}`: another replica's request for a GPU node held here.

The Ollama native API of that one node, for replicas only (`X-OllaBridge-Replica`: the HMAC of the
shared admin token, ollabridge/replicas/auth.py; anything else is a 401), not in the OpenAPI
document. The canonical request goes to the node as it came; the canonical stream comes back as
NDJSON (one chunk object a line; a failure after the first chunk is an `{"error": ...}` line, and
before it the error's own status). The node's slot is leased here, in this replica's fair queue
(a full node makes the request wait, as a local one would), and a forwarder that goes away stops
the node's request at once. Never forwarded again: only a node connected to this replica serves it
(any other node id is a 503 the forwarder retries elsewhere).
"""

from __future__ import annotations

import time
from typing import Any, AsyncContextManager, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ollabridge.api.streaming import NDJSONResponse, start, unless_gone
from ollabridge.edge import context as edge
from ollabridge.errors import GatewayError
from ollabridge.jsonwire import dumps, loads
from ollabridge.replicas import auth
from ollabridge.routing.serve import count_tokens

router = APIRouter(prefix="/internal", include_in_schema=False)

STREAMS = ("chat", "generate")
CALLS = ("embed", "embeddings", "show")


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@router.post("/nodes/{node_id}/api/{op}")
async def serve_node(node_id: str, op: str, request: Request):
    gw = request.app.state.gateway
    if not auth.valid(request.headers.get(auth.HEADER), gw.pairing.admin_token):
        return _error(401, "This endpoint is for the gateway's replicas only.")
    if op not in STREAMS + CALLS:
        return _error(404, f"No op '{op}' here.")
    try:
        body = loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _error(400, "The body must be a JSON object.")
    node = gw.hub.nodes.get(node_id)
    if node is None or not node.serves(op):
        return _error(503, f"GPU node {node_id} is not connected to this replica.")
    model = body.get("model") or ""
    served = edge.track(request, model)
    if served is not None:
        served.update(backend=node.name, kind=node.kind)
    try:
        if op in CALLS:
            return JSONResponse(await unless_gone(_call(gw, node, op, body), request.receive))
        stream = _leased(gw, node, op, body, served)
        first = await unless_gone(start(stream), request.receive)
        if first.get("done"):  # a one-object answer (`stream: false`): no streaming response to run
            await stream.aclose()
            return Response(dumps(first) + b"\n", media_type="application/x-ndjson")
        return NDJSONResponse(first, stream)
    except GatewayError as exc:
        return _error(exc.status, exc.message)


def _lease(gw: Any, node: Any, model: str) -> AsyncContextManager[Any]:
    """The node's slot, from this replica's queue (every other member excluded)."""
    return gw.router.slots.lease(model, {id(b) for b in gw.router.backends if b is not node}, "replica")


async def _call(gw: Any, node: Any, op: str, body: dict[str, Any]) -> dict[str, Any]:
    async with _lease(gw, node, body.get("model") or "") as backend:
        _check(backend, node)
        return await node.call(op, body)


async def _leased(gw: Any, node: Any, op: str, body: dict[str, Any],
                  served: dict[str, Any] | None) -> AsyncIterator[dict[str, Any]]:
    """The node's stream while its slot is held, timed by the stall watch; its last chunk counted
    into the node's speed."""
    model = body.get("model") or ""
    async with _lease(gw, node, model) as backend:
        _check(backend, node)
        started, first, outputs = time.monotonic(), None, 0
        chunks = aiter(node.stream(op, body))
        # Timed by this replica's stall watch, as its own streams are: a node that froze mid-answer is
        # lost here within seconds, its error line reaches the forwarder, which resumes elsewhere.
        pace = gw.router.serving.stall.pace(node)
        try:
            while True:
                if pace is not None:
                    pace.waiting()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                finally:
                    if pace is not None:
                        pace.arrived()
                first = first or time.monotonic()
                if chunk.get("done"):
                    count_tokens(node, chunk, started, first, model, outputs)
                    if served is not None:
                        served["done"] = chunk
                else:
                    outputs += 1
                    node.stats.streamed += 1  # the node's tokens/s in this replica's history
                yield chunk
        finally:
            if pace is not None:
                pace.close()
            await chunks.aclose()  # now, with the slot still held: the node gets its cancel


def _check(backend: Any, node: Any) -> None:
    if backend is not node:  # a member joined while this waited in the queue, and got the slot
        raise GatewayError(f"GPU node {node.node_id} is busy on this replica.", status=503)
