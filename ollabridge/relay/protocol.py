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

OPS = ("chat", "generate", "embed", "embeddings", "show", "ps")
STREAMING_OPS = ("chat", "generate")  # answered with a stream of res frames; the others with one
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


MODEL_FIELDS: dict[str, type | tuple[type, ...]] = {"model": str, "modified_at": str, "digest": str,
                                                   "details": dict, "size": (int, float)}


def _models(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ProtocolError("'models' is a list of Ollama /api/tags model objects")
    out = []
    for m in value[:1000]:
        name = m.get("name") or m.get("model")
        if not isinstance(name, str) or not name:
            raise ProtocolError("every model needs a 'name'")
        # Fields the gateway and its clients read keep only values of their type (routing hashes names).
        entry = {k: v for k, v in m.items() if not (k in MODEL_FIELDS and not isinstance(v, MODEL_FIELDS[k]))}
        out.append({**entry, "name": name, "model": entry.get("model") or name})
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
    ollama_version: str | None = None  # the node's Ollama, for the gateway's /api/version


    @property
    def capabilities(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "vram_mb": self.vram_mb, "slots": self.slots, "ops": self.ops,
                "goaway": self.goaway, "ollama_version": self.ollama_version}


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
                 vram_mb=int(vram) if _number(vram) and 0 <= vram <= MAX_COUNT else None,
                 ops=[o for o in ops if o in OPS], goaway=caps.get("goaway") is True,
                 ollama_version=str(caps["ollama_version"])[:40] if isinstance(caps.get("ollama_version"), str) else None)


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


# -- what a node answers: checked before anything in the gateway reads it --------------------------
class BadAnswer(ValueError):
    """A `res` whose data is not a usable Ollama answer: that request fails (502), the socket stays."""


MAX_COUNT = 2**63 - 1  # Ollama's counts and durations are Go int64s
COUNTS = ("prompt_eval_count", "eval_count", "total_duration", "load_duration", "prompt_eval_duration",
          "eval_duration")
TEXTS = ("model", "created_at", "done_reason", "response", "thinking", "error")
MESSAGE_TEXTS = ("role", "content", "thinking", "tool_name")
SHOW_TEXTS = ("modelfile", "parameters", "template", "license", "system", "modified_at")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e300 < value < 1e300


def _text(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise BadAnswer(f"'{name}' is not a string")


def _strings(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise BadAnswer(f"'{name}' is not a list of strings")


def _vector(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(_number(v) for v in value):
        raise BadAnswer(f"'{name}' is not a list of numbers")


def _tool_call(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadAnswer("a tool call is an object with a 'function' object")
    fn = call["function"]
    _text("tool_calls.function.name", fn.get("name"))
    if fn.get("arguments") is not None and not isinstance(fn["arguments"], (dict, str)):
        raise BadAnswer("'tool_calls.function.arguments' is an object")
    _text("tool_calls.id", call.get("id"))
    index = call.get("index")
    if index is not None and not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index <= MAX_COUNT):
        raise BadAnswer("'tool_calls.index' is not a non-negative integer")
    return call


def _message(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadAnswer("'message' is not an object")
    for key in MESSAGE_TEXTS:
        _text(f"message.{key}", value.get(key))
    _strings("message.images", value.get("images"))
    calls = value.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise BadAnswer("'message.tool_calls' is not a list")
        value = {**value, "tool_calls": [_tool_call(call) for call in calls]}
    return value


def check_answer(op: str, data: dict[str, Any], done: bool) -> dict[str, Any]:
    """One `res` data object as the gateway may use it, or BadAnswer: counts and durations become
    non-negative ints, texts are strings, a message has string content and well-formed tool calls,
    embeddings are lists of numbers; a streamed chunk's `done` is the frame's. Other keys pass as sent."""
    out = dict(data)
    for key in COUNTS:
        value = out.get(key)
        if value is not None:
            if not _number(value) or not 0 <= value <= MAX_COUNT:
                raise BadAnswer(f"'{key}' is not a non-negative number")
            out[key] = int(value)
    for key in TEXTS:
        _text(key, out.get(key))
    if "message" in out:
        out["message"] = _message(out["message"])
    context = out.get("context")
    if context is not None and (not isinstance(context, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in context)):
        raise BadAnswer("'context' is not a list of integers")
    if op == "embed" and "embeddings" in out:
        if not isinstance(out["embeddings"], list):
            raise BadAnswer("'embeddings' is not a list")
        for vector in out["embeddings"]:
            _vector("embeddings", vector)
    elif op == "embeddings" and "embedding" in out:
        _vector("embedding", out["embedding"])
    elif op == "show":
        for key in SHOW_TEXTS:
            _text(key, out.get(key))
        for key in ("details", "model_info"):
            if out.get(key) is not None and not isinstance(out[key], dict):
                raise BadAnswer(f"'{key}' is not an object")
        _strings("capabilities", out.get("capabilities"))
    elif op not in ("embed", "embeddings"):
        if out.get("done") is not None and not isinstance(out["done"], bool):
            raise BadAnswer("'done' is not a boolean")
        out["done"] = done
    return out


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
