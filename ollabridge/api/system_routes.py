"""System routes: `/health`, `/ollama/status`, and `HEAD /` for clients that probe the root."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

router = APIRouter(tags=["System"])


@router.head("/", include_in_schema=False)
async def root_probe():
    """Clients probe the base URL (Claude Code sends `HEAD /`): 200. `GET /` is the web UI."""
    return PlainTextResponse("")


@router.get("/health")
async def health(request: Request):
    """Gateway health: ok or degraded, each backend with its models, relay statistics, and the shared
    state (`shared_state.redis`: whether the replicas' Redis answers)."""
    return await request.app.state.gateway.views.health()


@router.get("/ollama/status")
async def status(request: Request):
    """Ollama reachable or not, its version, pulled and loaded models, the active engine, GPU nodes
    counted (the owner lists them at `/device/nodes`)."""
    return await request.app.state.gateway.views.status(nodes=False)
