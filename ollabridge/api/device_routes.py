"""Pairing a GPU node by code (RFC 8628 device flow), and managing paired nodes."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ollabridge.edge.auth import bearer
from ollabridge.edge.context import client
from ollabridge.pairing import DeviceFlowError, PairingService

router = APIRouter(prefix="/device", tags=["Device relay"])


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Optional[str] = Field(None, max_length=64, description="A name for the node, e.g. colab-t4")
    agent: Optional[str] = Field(None, max_length=100)
    models: Optional[list[Any]] = Field(None, description="What the node offers (shown to the owner)")
    capabilities: Optional[dict[str, Any]] = None


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    device_code: str = Field(..., max_length=200)
    grant_type: Optional[str] = None


class CodeRequest(BaseModel):
    user_code: str = Field(..., max_length=40, description="The code the node shows, e.g. BCDF-GHJK")


def _pairing(request: Request) -> PairingService:
    return request.app.state.gateway.pairing


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _admin(request: Request) -> str | None:
    return bearer(request.headers.get("authorization"))


@router.post("/start")
async def start(request: Request, body: Optional[StartRequest] = None):
    """Begin pairing: show `user_code` to the owner, then poll `/device/token` every `interval` s."""
    body = body or StartRequest()
    return _pairing(request).start(name=body.name or "", client=client(request), base_url=_base(request),
                                   offers={"models": body.models or [], "capabilities": body.capabilities or {},
                                           "agent": body.agent})


@router.post("/token", responses={400: {"description": "authorization_pending, slow_down, expired_token, "
                                                       "access_denied or invalid_grant"}})
async def token(body: TokenRequest, request: Request):
    """The device polls: 400 with an RFC 8628 error until approved, then the node token, once."""
    try:
        return _pairing(request).poll(body.device_code, base_url=_base(request), client=client(request))
    except DeviceFlowError as exc:
        return JSONResponse({"error": exc.error, "error_description": exc.description}, status_code=400,
                            headers={"Cache-Control": "no-store"})


@router.post("/approve")
async def approve(body: CodeRequest, request: Request):
    """Approve a code (needs `Authorization: Bearer <admin token>`)."""
    return _pairing(request).approve(body.user_code, _admin(request), client(request))


@router.post("/deny")
async def deny(body: CodeRequest, request: Request):
    """Deny a code (needs the admin token)."""
    return _pairing(request).deny(body.user_code, _admin(request), client(request))


@router.get("/lookup")
async def lookup(user_code: str, request: Request):
    """What a code is for, before approving it (needs the admin token)."""
    pairing = _pairing(request)
    pairing.check_admin(_admin(request), client(request))
    return pairing.lookup(user_code)


@router.get("/nodes")
async def nodes(request: Request):
    """Paired nodes: name, created, last seen, connected, models, GPU (needs the admin token; the open
    `/health` and `/ollama/status` only count them)."""
    pairing = _pairing(request)
    pairing.check_admin(_admin(request), client(request))
    return {"nodes": pairing.nodes()}


@router.delete("/nodes/{node_id}")
async def revoke(node_id: str, request: Request):
    """Revoke a node: its socket closes now (4403) and its token never works again."""
    return _pairing(request).revoke(node_id, _admin(request), client(request))
