"""The Responses API's stream on the wire, from the canonical stream (Ollama chat chunks).

Typed events, each with a `sequence_number` from 0: `response.created`, `response.in_progress`,
then per output item `response.output_item.added`, its parts and deltas (reasoning summary text,
`response.content_part.added` / `response.output_text.delta` / `.done` / `response.content_part.done`,
or `response.function_call_arguments.delta` / `.done`) and `response.output_item.done`; finally
`response.completed`, or `response.failed` when the backend fails after the start. Codex prints the
text of `output_item.done` and needs `response.completed` to end a turn.
"""

from __future__ import annotations

import time
from typing import Any

from ollabridge.api.openai.responses_convert import (function_call_item, message_item, new_id, reasoning_item,
                                                     response_object, usage)
from ollabridge.api.openai.responses_protocol import ResponsesRequest
from ollabridge.api.streaming import SSEEncoder, sse_event
from ollabridge.errors import GatewayError


class ResponseSSE(SSEEncoder):
    def __init__(self, req: ResponsesRequest, model: str, namespaced: dict[str, tuple[str, str]]) -> None:
        self.req = req
        self.model = model
        self.namespaced = namespaced
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.seq = 0
        self.started = False
        self.output: list[dict[str, Any]] = []  # finished items
        self.open: dict[str, Any] | None = None  # the item being streamed: its kind, id and text so far
        self.out: list[bytes] = []

    def _emit(self, kind: str, **fields: Any) -> None:
        self.out.append(sse_event(kind, {"type": kind, "sequence_number": self.seq, **fields}))
        self.seq += 1

    def _response(self, status: str, usage_: dict[str, Any] | None = None,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_object(self.req, self.id, self.model, self.created_at, status, list(self.output),
                               usage_, error)

    def _open(self, kind: str) -> dict[str, Any]:
        self._close()
        index = len(self.output)
        item_id = new_id("rs" if kind == "reasoning" else "msg")
        self.open = {"kind": kind, "id": item_id, "index": index, "text": []}
        if kind == "reasoning":
            self._emit("response.output_item.added", output_index=index,
                       item={"id": item_id, "type": "reasoning", "summary": []})
        else:
            self._emit("response.output_item.added", output_index=index, item=message_item(item_id, "", "in_progress"))
            self._emit("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                       part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        return self.open

    def _close(self) -> None:
        item, self.open = self.open, None
        if item is None:
            return
        text, where = "".join(item["text"]), {"item_id": item["id"], "output_index": item["index"]}
        if item["kind"] == "reasoning":
            done = reasoning_item(item["id"], text)
            self._emit("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
        else:
            done = message_item(item["id"], text)
            self._emit("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            self._emit("response.content_part.done", **where, content_index=0, part=done["content"][0])
        self.output.append(done)
        self._emit("response.output_item.done", output_index=item["index"], item=done)

    def _text(self, kind: str, delta: str) -> None:
        item = self.open if self.open is not None and self.open["kind"] == kind else self._open(kind)
        item["text"].append(delta)
        where = {"item_id": item["id"], "output_index": item["index"]}
        if kind == "reasoning":
            self._emit("response.reasoning_summary_text.delta", **where, summary_index=0, delta=delta)
        else:
            self._emit("response.output_text.delta", **where, content_index=0, delta=delta, logprobs=[])

    def encode(self, chunk: dict[str, Any]) -> bytes:
        self.out = []
        if not self.started:
            self.started = True
            self._emit("response.created", response=self._response("in_progress"))
            self._emit("response.in_progress", response=self._response("in_progress"))
        message = chunk.get("message") or {}
        if message.get("thinking"):
            self._text("reasoning", message["thinking"])
        if message.get("content"):
            self._text("message", message["content"])
        for call in message.get("tool_calls") or ():
            self._close()
            item = function_call_item(call, self.namespaced, "completed")
            index, where = len(self.output), {"item_id": item["id"], "output_index": len(self.output)}
            self._emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress",
                                                                                "arguments": ""})
            self._emit("response.function_call_arguments.delta", **where, delta=item["arguments"])
            self._emit("response.function_call_arguments.done", **where, arguments=item["arguments"])
            self.output.append(item)
            self._emit("response.output_item.done", output_index=index, item=item)
        if chunk.get("done"):
            self._close()
            if not self.output:
                self._open("message")
                self._close()
            self._emit("response.completed", response=self._response("completed", usage(chunk)))
        return b"".join(self.out)

    def error(self, err: GatewayError) -> bytes:
        self.out = []
        self._emit("response.failed", response=self._response("failed", error={"code": err.code or "server_error",
                                                                               "message": err.message}))
        return b"".join(self.out)
