"""Relay protocol version 1: frame types, validation and close codes (docs/relay-protocol.md).

Every frame is a JSON object in a WebSocket text frame with a string `type`. Both ends use
these functions, so the gateway and the node agent agree on what is valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROTOCOL = 1

# Close codes (4000-4999 are the application's own).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_RESTARTING = 1012
CLOSE_TOO_BIG = 1009
CLOSE_PROTOCOL_ERROR = 4400
CLOSE_BAD_TOKEN = 4401
CLOSE_REVOKED = 4403
CLOSE_HEARTBEAT = 4408
CLOSE_REPLACED = 4409
CLOSE_UNSUPPORTED = 4426

CLOSE_REASONS = {
    CLOSE_GOING_AWAY: "gateway going away",
    1006: "connection lost",
    1011: "gateway error",
    1012: "gateway restarting",
    CLOSE_TOO_BIG: "frame too large",
    CLOSE_PROTOCOL_ERROR: "protocol error",
    CLOSE_BAD_TOKEN: "bad node token",
    CLOSE_REVOKED: "node revoked",
    CLOSE_HEARTBEAT: "heartbeat timeout",
    CLOSE_REPLACED: "replaced by a newer connection of the same node",
    CLOSE_UNSUPPORTED: "unsupported protocol version",
}

OPS = ("chat", "embed", "embeddings", "show")
NODE_TYPES = ("hello", "ping", "pong", "res", "models")
CLOUD_TYPES = ("welcome", "ping", "pong", "req", "cancel", "credit", "goaway")

DEFAULT_MAX_FRAME = 8 * 1024 * 1024  # bytes of one text frame
MAX_CLOSE_REASON = 123  # bytes: a close frame's payload is at most 125, 2 of them the code
DEFAULT_WINDOW = 64  # res frames a node may send for one request before it needs credit
MAX_SLOTS = 256
MAX_ID = 64


class ProtocolError(Exception):
    """A frame that breaks the protocol; the socket closes with `code`."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


def encode(frame: dict[str, Any]) -> str:
    """A frame as the JSON text of one WebSocket message."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def close_reason(text: str) -> str:
    """`text` cut to fit a close frame: at most 123 bytes of UTF-8, never half a character."""
    return text.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")


def parse(raw: Any, max_bytes: int = DEFAULT_MAX_FRAME, allowed: tuple[str, ...] = NODE_TYPES) -> dict[str, Any]:
    """One frame from a received message; raises ProtocolError."""
    if isinstance(raw, (bytes, bytearray)):
        raise ProtocolError("binary frames are not part of the protocol; send JSON text frames")
    if not isinstance(raw, str):
        raise ProtocolError("expected a text frame")
    if len(raw) > max_bytes:  # characters >= bytes / 4; a cheap bound before decoding
        raise ProtocolError(f"frame larger than {max_bytes} bytes", CLOSE_TOO_BIG)
    try:
        frame = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ProtocolError("a frame is a JSON object with a string 'type'")
    if frame["type"] not in allowed:
        raise ProtocolError(f"unknown frame type {frame['type'][:40]!r}")
    return frame


def _request_id(frame: dict[str, Any]) -> str:
    rid = frame.get("id")
    if not isinstance(rid, str) or not rid or len(rid) > MAX_ID:
        raise ProtocolError(f"'{frame['type']}' needs a string 'id' of at most {MAX_ID} characters")
    return rid


def _models(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ProtocolError("'models' is a list of Ollama /api/tags model objects")
    out = []
    for m in value[:1000]:
        name = m.get("name") or m.get("model")
        if not isinstance(name, str) or not name:
            raise ProtocolError("every model needs a 'name'")
        out.append({**m, "name": name, "model": m.get("model") or name})
    return out


@dataclass
class Hello:
    name: str
    agent: str
    models: list[dict[str, Any]]
    slots: int
    gpu: str | None = None
    vram_mb: int | None = None
    ops: list[str] = field(default_factory=lambda: list(OPS))
    goaway: bool = False  # the node understands the `goaway` frame


    @property
    def capabilities(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "vram_mb": self.vram_mb, "slots": self.slots, "ops": self.ops,
                "goaway": self.goaway}


def check_hello(frame: dict[str, Any]) -> Hello:
    if frame.get("type") != "hello":
        raise ProtocolError("the first frame must be 'hello'")
    if frame.get("protocol") != PROTOCOL:
        raise ProtocolError(f"protocol {frame.get('protocol')!r} is not supported; this gateway speaks "
                            f"protocol {PROTOCOL}", CLOSE_UNSUPPORTED)
    caps = frame.get("capabilities") or {}
    if not isinstance(caps, dict):
        raise ProtocolError("'capabilities' is an object")
    slots = caps.get("slots", 1)
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS:
        raise ProtocolError(f"'capabilities.slots' is an integer from 1 to {MAX_SLOTS}")
    ops = caps.get("ops") or ["chat"]
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise ProtocolError("'capabilities.ops' is a list of strings")
    vram = caps.get("vram_mb")
    gpu = caps.get("gpu")
    name = frame.get("name") or "gpu-node"
    agent = frame.get("agent") or ""
    if not isinstance(name, str) or not isinstance(agent, str):
        raise ProtocolError("'name' and 'agent' are strings")
    return Hello(name=name[:64], agent=agent[:100], models=_models(frame.get("models", [])), slots=slots,
                 gpu=str(gpu)[:100] if gpu else None,
                 vram_mb=int(vram) if isinstance(vram, (int, float)) and not isinstance(vram, bool) else None,
                 ops=[o for o in ops if o in OPS], goaway=caps.get("goaway") is True)


def check_node_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a frame a node sent after `welcome`; returns it (res/models normalized)."""
    kind = frame["type"]
    if kind == "hello":
        raise ProtocolError("'hello' was already sent")
    if kind == "models":
        return {"type": "models", "models": _models(frame.get("models"))}
    if kind == "res":
        rid = _request_id(frame)
        done = frame.get("done", False)
        if not isinstance(done, bool):
            raise ProtocolError("'res.done' is a boolean")
        error = frame.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ProtocolError("'res.error' is an object {status, message}")
            status = error.get("status", 502)
            if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
                status = 502
            return {"type": "res", "id": rid, "done": True,
                    "error": {"status": status, "message": str(error.get("message") or "node error")[:2000]}}
        data = frame.get("data")
        if not isinstance(data, dict):
            raise ProtocolError("'res.data' is one Ollama response object")
        return {"type": "res", "id": rid, "done": done, "data": data}
    return frame  # ping / pong


def check_cloud_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a frame the gateway sent (used by the node agent)."""
    kind = frame["type"]
    if kind == "welcome":
        if frame.get("protocol") != PROTOCOL:
            raise ProtocolError("the gateway speaks another protocol version", CLOSE_UNSUPPORTED)
        return frame
    if kind == "req":
        _request_id(frame)
        if frame.get("op") not in OPS or not isinstance(frame.get("body"), dict):
            raise ProtocolError("'req' needs an 'op' and a 'body' object")
    elif kind in ("cancel", "credit"):
        _request_id(frame)
        if kind == "credit" and (not isinstance(frame.get("n"), int) or frame["n"] < 1):
            raise ProtocolError("'credit.n' is a positive integer")
    return frame
