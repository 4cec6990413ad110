"""The owner's API keys (`/admin/keys`, admin token) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ollabridge.edge.auth import bearer
from ollabridge.edge.context import client
from ollabridge.edge.metrics import CONTENT_TYPE

router = APIRouter(tags=["Admin"])


class AdminError(BaseModel):
    error: str


class MintRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field("api-key", min_length=1, max_length=64, description="Who the key is for (shown in logs)")
    rpm: Optional[int] = Field(None, ge=0, le=1_000_000,
                               description="Requests a minute (default OLLABRIDGE_KEY_RATE_LIMIT_RPM; 0: no limit)")
    streams: Optional[int] = Field(None, ge=0, le=10_000,
                                   description="Requests in flight (default OLLABRIDGE_KEY_RATE_LIMIT_STREAMS; 0: none)")
    weight: Optional[float] = Field(None, gt=0, le=100, description="Its share of the queue when every "
                                    "backend is full: turns per turn of a weight-1 caller (default 1)")


class KeyInfo(BaseModel):
    id: str
    name: str
    source: str
    prefix: Optional[str] = None
    created: Optional[str] = None
    rpm: Optional[int] = None
    streams: Optional[int] = None
    weight: float = 1.0


class MintedKey(KeyInfo):
    key: str = Field(..., description="The secret: shown only now, stored only as its SHA-256")


class KeyList(BaseModel):
    api_open: bool = Field(..., description="True when no key is configured or minted: the API needs none")
    keys: list[KeyInfo]


class Revoked(BaseModel):
    id: str
    name: str
    revoked: bool
    api_open: bool


_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": AdminError, "description": "Invalid request"},
    401: {"model": AdminError, "description": "Missing or wrong admin token"},
    429: {"model": AdminError, "description": "Too many wrong tokens or keys from this address (Retry-After)"}}


def _admin(request: Request) -> None:
    request.app.state.gateway.pairing.check_admin(bearer(request.headers.get("authorization")), client(request))


@router.post("/admin/keys", response_model=MintedKey, responses=_ADMIN_ERRORS)
async def mint_key(request: Request, body: Optional[MintRequest] = None):
    """Mint an API key (needs `Authorization: Bearer <admin token>`). Once a key exists, `/v1`,
    `/ollama/v1` and `/ollama/api` need one."""
    _admin(request)
    body = body or MintRequest()
    return request.app.state.gateway.keys.mint(body.name, body.rpm, body.streams, body.weight)


@router.get("/admin/keys", response_model=KeyList, responses=_ADMIN_ERRORS)
async def list_keys(request: Request):
    """API keys (never their secrets): minted ones and those from OLLABRIDGE_API_KEYS."""
    _admin(request)
    keys = request.app.state.gateway.keys
    return {"api_open": not keys.enabled, "keys": keys.list()}


@router.delete("/admin/keys/{key_id}", response_model=Revoked,
               responses={**_ADMIN_ERRORS, 404: {"model": AdminError, "description": "No such live key"},
                          409: {"model": AdminError, "description": "The key comes from OLLABRIDGE_API_KEYS"}})
async def revoke_key(key_id: str, request: Request):
    """Revoke a minted key: it stops working at once. With no key left, the API is open again."""
    _admin(request)
    return request.app.state.gateway.keys.revoke(key_id)


@router.get("/metrics", tags=["System"], response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"},
                       401: {"model": AdminError, "description": "OLLABRIDGE_METRICS=admin and no admin token"},
                       429: _ADMIN_ERRORS[429],
                       404: {"model": AdminError, "description": "OLLABRIDGE_METRICS=0"}})
async def metrics(request: Request):
    """Prometheus metrics: requests, latency and time-to-first-token histograms, tokens, in flight,
    nodes, rate-limit hits (see README)."""
    gateway = request.app.state.gateway
    mode = gateway.settings.metrics
    if mode == "0":
        return Response('{"error": "metrics are off (OLLABRIDGE_METRICS=0)"}', status_code=404,
                        media_type="application/json")
    if mode == "admin":
        _admin(request)
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)
