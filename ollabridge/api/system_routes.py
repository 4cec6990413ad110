"""System routes: `/health` and `/ollama/status`."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["System"])


@router.get("/health")
async def health(request: Request):
    """Gateway health: ok or degraded, each backend with its models, and relay statistics."""
    return await request.app.state.gateway.views.health()


@router.get("/ollama/status")
async def status(request: Request):
    """Ollama reachable or not, its version, pulled and loaded models, the active engine, GPU nodes
    counted (the owner lists them at `/device/nodes`)."""
    return await request.app.state.gateway.views.status(nodes=False)
