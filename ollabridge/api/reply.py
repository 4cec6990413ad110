"""What a whole canonical reply said: the thinking, text and tool calls of all its Ollama `/api/chat`
chunks, and its final chunk (counts, done_reason). Pure: the families' non-streamed answers build on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class Reply:
    thinking: str = ""
    text: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)


def gather(chunks: Iterable[dict[str, Any]]) -> Reply:
    thinking: list[str] = []
    text: list[str] = []
    reply = Reply()
    for chunk in chunks:
        message = chunk.get("message") or {}
        thinking.append(message.get("thinking") or "")
        text.append(message.get("content") or "")
        reply.calls.extend(message.get("tool_calls") or [])
        reply.last = chunk
    reply.thinking, reply.text = "".join(thinking), "".join(text)
    return reply
