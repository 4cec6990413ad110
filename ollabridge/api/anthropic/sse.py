"""Anthropic's Messages stream on the wire, from the canonical stream (Ollama chat chunks).

Event order, as Anthropic's API and Ollama send it: `message_start` (and a `ping`), then per content
block `content_block_start`, its deltas (`thinking_delta`, `text_delta`, `input_json_delta`) and
`content_block_stop`, then `message_delta` (stop_reason and usage) and `message_stop`. A failure
after the start is an `error` event. While the backend is silent: SSE comments before
`message_start`, `ping` events after.
"""

from __future__ import annotations

import json
from typing import Any

from ollabridge.api.anthropic.convert import error_body, new_message_id, stop_reason, tool_use_block, usage
from ollabridge.api.streaming import SSEEncoder, sse_event
from ollabridge.errors import GatewayError

PING = sse_event("ping", {"type": "ping"})


class MessageSSE(SSEEncoder):
    def __init__(self, model: str) -> None:
        self.id = new_message_id()
        self.model = model
        self.started = False
        self.index = -1
        self.open: str | None = None  # the type of the content block being streamed
        self.used_tools = False

    @property
    def keepalive(self) -> bytes:  # type: ignore[override]
        return PING if self.started else SSEEncoder.keepalive

    def _start(self, out: list[bytes], chunk: dict[str, Any]) -> None:
        self.started = True
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": int(chunk.get("prompt_eval_count") or 0), "output_tokens": 0}}
        out.append(sse_event("message_start", {"type": "message_start", "message": message}))
        out.append(PING)

    def _block(self, out: list[bytes], kind: str, block: dict[str, Any]) -> None:
        self._close(out)
        self.index += 1
        self.open = kind
        out.append(sse_event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                     "content_block": block}))

    def _delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                     "delta": delta}))

    def _close(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            self.open = None

    def encode(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self._start(out, chunk)
        message = chunk.get("message") or {}
        if message.get("thinking"):
            if self.open != "thinking":
                self._block(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self._delta(out, {"type": "thinking_delta", "thinking": message["thinking"]})
        if message.get("content"):
            if self.open != "text":
                self._block(out, "text", {"type": "text", "text": ""})
            self._delta(out, {"type": "text_delta", "text": message["content"]})
        for call in message.get("tool_calls") or ():
            block = tool_use_block(call)
            self.used_tools = True
            self._block(out, "tool_use", {**block, "input": {}})
            self._delta(out, {"type": "input_json_delta", "partial_json": json.dumps(block["input"])})
            self._close(out)
        if chunk.get("done"):
            self._close(out)
            out.append(sse_event("message_delta", {"type": "message_delta",
                                                   "delta": {"stop_reason": stop_reason(chunk, self.used_tools),
                                                             "stop_sequence": None},
                                                   "usage": usage(chunk)}))
            out.append(sse_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, err: GatewayError) -> bytes:
        return sse_event("error", error_body(err.status, err.message))
