"""Pure converters between Anthropic's Messages API and Ollama's native chat (data in, data out).

Modelled on Ollama's own `anthropic/anthropic.go`, with what Claude Code needs besides:
`system` messages inside `messages`, system blocks joined by newlines (minus Claude Code's
`x-anthropic-billing-header` block, which would defeat the backend's prompt cache), and
`tool_result` messages that keep `tool_call_id` and also name the tool (`tool_name`).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Iterable

from ollabridge.api.anthropic.protocol import Block, CountTokensRequest, MessageParam, MessagesRequest
from ollabridge.api.reply import gather
from ollabridge.errors import BadRequest

BILLING_HEADER = "x-anthropic-billing-header:"
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high", "xhigh": "high"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def new_tool_use_id() -> str:
    return f"toolu_{secrets.token_hex(12)}"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object; the SDKs pick the exception class from the HTTP status."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


# -- requests ---------------------------------------------------------------------------
def _text(content: str | list[Block] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(b.text or "" for b in content if b.type == "text")


def _system(system: str | list[Block] | None) -> str:
    if isinstance(system, list):
        return "\n".join(b.text or "" for b in system
                         if b.type == "text" and b.text and not b.text.startswith(BILLING_HEADER))
    return system or ""


def _image(block: Block) -> str:
    source = block.source
    if source is None or source.type != "base64" or not source.data:
        kind = source.type if source is not None else "missing"
        raise BadRequest(f"Image source type '{kind}' is not supported: send images as base64 "
                         "(the gateway fetches nothing for a caller).", param="messages")
    return source.data


def _arguments(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"value": value} if value is not None else {}


def _messages(messages: list[MessageParam]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name, to name each tool_result
    for message in messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        text: list[str] = []
        images: list[str] = []
        calls: list[dict[str, Any]] = []
        thinking = ""
        for block in message.content:
            if block.type == "text":
                text.append(block.text or "")
            elif block.type == "image":
                images.append(_image(block))
            elif block.type == "thinking":
                thinking = block.thinking or ""
            elif block.type == "tool_use":
                call_id = block.id or new_tool_use_id()
                names[call_id] = block.name or ""
                calls.append({"id": call_id, "function": {"name": block.name or "", "arguments": _arguments(block.input)}})
            elif block.type == "tool_result":
                result = block.content
                tool: dict[str, Any] = {"role": "tool", "content": _text(result),
                                        "tool_call_id": block.tool_use_id or ""}
                if block.tool_use_id in names:
                    tool["tool_name"] = names[block.tool_use_id]
                if isinstance(result, list) and any(b.type == "image" for b in result):
                    tool["images"] = [_image(b) for b in result if b.type == "image"]
                out.append(tool)  # a user turn's tool results come before its own text, as Ollama orders them
            # redacted_thinking, document, search_result ...: nothing a local model can use
        entry: dict[str, Any] = {"role": message.role, "content": "".join(text)}
        if images:
            entry["images"] = images
        if calls:
            entry["tool_calls"] = calls
        if thinking:
            entry["thinking"] = thinking
        if entry["content"] or images or calls or thinking:
            out.append(entry)
    return out


def think_value(req: MessagesRequest) -> bool | str | None:
    """`thinking` → Ollama's `think`: enabled → true, disabled → false, otherwise (Claude Code's
    `adaptive`) the `output_config.effort` level; None when neither says."""
    if req.thinking is not None and req.thinking.type == "enabled":
        return True
    if req.thinking is not None and req.thinking.type == "disabled":
        return False
    effort = req.output_config.effort if req.output_config is not None else None
    return EFFORTS.get(effort or "")


def tools_to_ollama(tools: Iterable[Any]) -> list[dict[str, Any]]:
    """Custom tools as Ollama functions; server tools (web_search_..., code_execution_...) are dropped."""
    out = []
    for tool in tools:
        if tool.type not in (None, "custom") or tool.input_schema is None:
            continue
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


def messages_request_to_ollama(req: MessagesRequest, model: str) -> dict[str, Any]:
    """A Messages request → the body of Ollama's `POST /api/chat` (always streamed)."""
    options: dict[str, Any] = {"num_predict": req.max_tokens}
    for name, value in (("temperature", req.temperature), ("top_p", req.top_p), ("top_k", req.top_k)):
        if value is not None:
            options[name] = value
    if req.stop_sequences:
        options["stop"] = list(req.stop_sequences)
    messages = _messages(req.messages)
    system = _system(req.system)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, "options": options}
    if req.tools and (req.tool_choice is None or req.tool_choice.type != "none"):
        tools = tools_to_ollama(req.tools)
        if tools:
            body["tools"] = tools
    think = think_value(req)
    if think is not None:
        body["think"] = think
    return body


def estimate_tokens(req: MessagesRequest | CountTokensRequest) -> int:
    """An estimate of the prompt's tokens: its characters / 4 (system, every message's text,
    thinking and tool blocks as JSON, every tool's name, description and schema), as Ollama
    estimates it. No backend is asked: a count costs nothing and works while every node is busy."""
    chars = len(_system(req.system))
    for message in req.messages:
        chars += len(message.role)
        if isinstance(message.content, str):
            chars += len(message.content)
            continue
        for block in message.content:
            if block.type in ("text", "thinking"):
                chars += len(block.text or block.thinking or "")
            elif block.type in ("tool_use", "tool_result"):
                chars += len(json.dumps(block.model_dump(exclude_none=True)))
    for tool in req.tools or []:
        chars += len(tool.name) + len(tool.description or "") + len(json.dumps(tool.input_schema or {}))
    return max(1, chars // 4)


# -- answers ----------------------------------------------------------------------------
def stop_reason(chunk: dict[str, Any], used_tools: bool) -> str:
    if used_tools:
        return "tool_use"
    return "max_tokens" if chunk.get("done_reason") == "length" else "end_turn"


def usage(chunk: dict[str, Any]) -> dict[str, int]:
    return {"input_tokens": int(chunk.get("prompt_eval_count") or 0), "output_tokens": int(chunk.get("eval_count") or 0)}


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    arguments = fn.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = {"value": arguments}
    return {"type": "tool_use", "id": call.get("id") or new_tool_use_id(), "name": fn.get("name", ""),
            "input": _arguments(arguments)}


def aggregate_message(chunks: Iterable[dict[str, Any]], model: str) -> dict[str, Any]:
    """All Ollama `/api/chat` objects of one reply → one Anthropic `message`."""
    reply = gather(chunks)
    content: list[dict[str, Any]] = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": ""})
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    content.extend(tool_use_block(call) for call in reply.calls)
    return {"id": new_message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason(reply.last, bool(reply.calls)), "stop_sequence": None,
            "usage": usage(reply.last)}
