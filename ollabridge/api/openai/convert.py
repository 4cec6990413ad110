"""Pure converters between OpenAI's wire format and Ollama's native one.

Data in, data out, no I/O: the routes call these at their edge, and the tests call them
directly. Modelled on Ollama's own `openai/openai.go`.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from typing import Any, Iterable

from ollabridge.api.openai.protocol import ChatCompletionRequest, ChatMessage, EmbeddingRequest
from ollabridge.errors import BadRequest

_FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}
# reasoning_effort → Ollama's think (as Ollama maps it): none turns thinking off, the levels pass on.
THINK_EFFORTS: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                        "high": "high", "xhigh": "high", "max": "high"}


def new_completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# -- requests ---------------------------------------------------------------------------
def _image(url: str) -> str:
    if not url.startswith("data:"):
        raise BadRequest("Image URLs are not fetched: send the image as a data URL "
                         "(data:image/png;base64,...); the gateway fetches nothing for a caller.", param="messages")
    return url.split(",", 1)[1] if "," in url else ""


def _message_to_ollama(message: ChatMessage, names: dict[str, str]) -> dict[str, Any]:
    """One message; `names` maps the tool-call ids seen so far to their function names."""
    role = "system" if message.role == "developer" else message.role
    role = "tool" if role == "function" else role
    out: dict[str, Any] = {"role": role, "content": ""}
    if isinstance(message.content, str):
        out["content"] = message.content
    elif message.content:
        texts, images = [], []
        for part in message.content:
            if part.type == "text" and part.text is not None:
                texts.append(part.text)
            elif part.type == "image_url" and part.image_url:
                url = part.image_url if isinstance(part.image_url, str) else part.image_url.get("url", "")
                images.append(_image(url))
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    thinking = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
    if role == "assistant" and isinstance(thinking, str) and thinking:
        out["thinking"] = thinking
    if message.tool_calls:
        out["tool_calls"] = []
        for call in message.tool_calls:
            entry: dict[str, Any] = {"function": {"name": call.function.name,
                                                  "arguments": _arguments(call.function.arguments)}}
            if call.id:
                entry["id"] = call.id
                names[call.id] = call.function.name
            out["tool_calls"].append(entry)
    if role == "tool":
        if message.tool_call_id:
            out["tool_call_id"] = message.tool_call_id
        name = message.name or names.get(message.tool_call_id or "")
        if name:
            out["tool_name"] = name
    return out


def _arguments(value: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value or "{}")
    except ValueError:
        return {"value": value}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def chat_request_to_ollama(req: ChatCompletionRequest, model: str) -> dict[str, Any]:
    """An OpenAI chat request → the body of Ollama's `POST /api/chat` (always streamed)."""
    options: dict[str, Any] = {}
    if req.temperature is not None:
        options["temperature"] = req.temperature
    if req.top_p is not None:
        options["top_p"] = req.top_p
    if req.seed is not None:
        options["seed"] = req.seed
    if req.stop:
        options["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    limit = req.max_completion_tokens or req.max_tokens
    if limit is not None:
        options["num_predict"] = limit
    if req.frequency_penalty is not None:
        options["frequency_penalty"] = req.frequency_penalty
    if req.presence_penalty is not None:
        options["presence_penalty"] = req.presence_penalty
    names: dict[str, str] = {}
    body: dict[str, Any] = {"model": model, "messages": [_message_to_ollama(m, names) for m in req.messages],
                            "stream": True, "options": options}
    effort = req.reasoning_effort or (req.reasoning or {}).get("effort")
    if effort:
        body["think"] = THINK_EFFORTS.get(effort, effort)
    if req.logprobs:
        body["logprobs"] = True
        if req.top_logprobs:
            body["top_logprobs"] = req.top_logprobs
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        body["format"] = "json"
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema_ if fmt.json_schema else None
        body["format"] = schema or "json"
    if req.tools and req.tool_choice != "none":
        body["tools"] = [tool.model_dump(exclude_none=True) for tool in req.tools]
    return body


def embedding_request_to_ollama(req: EmbeddingRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": req.input}
    if req.dimensions:
        body["dimensions"] = req.dimensions
    return body


# -- responses --------------------------------------------------------------------------
def usage_from(chunk: dict[str, Any]) -> dict[str, int]:
    prompt = int(chunk.get("prompt_eval_count") or 0)
    completion = int(chunk.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_calls(calls: Iterable[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    out = []
    for offset, call in enumerate(calls):
        fn = call.get("function") or {}
        arguments = fn.get("arguments", {})
        out.append({"index": start + offset, "id": call.get("id") or new_call_id(), "type": "function",
                    "function": {"name": fn.get("name", ""),
                                 "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return out


class StreamTranslator:
    """Turns a stream of Ollama `/api/chat` objects into OpenAI `chat.completion.chunk`s."""

    def __init__(self, model: str, include_usage: bool = False, completion_id: str | None = None) -> None:
        self.id = completion_id or new_completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.tool_calls = 0
        self._role_sent = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [choice]}

    def translate(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI chunks (zero or more) that stand for one Ollama object."""
        message = chunk.get("message") or {}
        delta: dict[str, Any] = {}
        if not self._role_sent:
            delta["role"] = "assistant"
            self._role_sent = True
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("tool_calls"):
            delta["tool_calls"] = _tool_calls(message["tool_calls"], self.tool_calls)
            self.tool_calls += len(message["tool_calls"])
        logprobs = chunk.get("logprobs")
        if not chunk.get("done"):
            return [self._chunk(delta, logprobs=logprobs)] if delta else []
        out = []
        if delta.keys() - {"role"}:
            out.append(self._chunk(delta, logprobs=logprobs))
            delta = {}
        final = self._chunk(delta, self.finish_reason(chunk))
        final["usage"] = usage_from(chunk)
        out.append(final)
        if self.include_usage:
            out.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage_from(chunk)})
        return out

    def finish_reason(self, chunk: dict[str, Any]) -> str:
        if self.tool_calls:
            return "tool_calls"
        return _FINISH.get(chunk.get("done_reason") or "stop", "stop")


def aggregate_completion(chunks: Iterable[dict[str, Any]], model: str) -> dict[str, Any]:
    """All Ollama `/api/chat` objects of one reply → one OpenAI `chat.completion`."""
    content: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    logprobs: list[Any] = []
    last: dict[str, Any] = {}
    for chunk in chunks:
        message = chunk.get("message") or {}
        if message.get("content"):
            content.append(message["content"])
        if message.get("thinking"):
            thinking.append(message["thinking"])
        if message.get("tool_calls"):
            calls.extend(message["tool_calls"])
        if isinstance(chunk.get("logprobs"), list):
            logprobs.extend(chunk["logprobs"])
        last = chunk
    text = "".join(content)
    result_message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if thinking:
        result_message["reasoning_content"] = "".join(thinking)
    finish = _FINISH.get(last.get("done_reason") or "stop", "stop")
    if calls:
        result_message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"}
                                        for call in _tool_calls(calls, 0)]
        finish = "tool_calls"
    return {"id": new_completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": result_message, "finish_reason": finish,
                                         **({"logprobs": {"content": logprobs}} if logprobs else {})}],
            "usage": usage_from(last)}


def models_to_openai(models: Iterable[dict[str, Any]]) -> dict[str, Any]:
    data = []
    for entry in models:
        name = entry.get("name") or entry.get("model")
        if not name:
            continue
        owner = (entry.get("ollabridge") or {}).get("kind", "ollabridge")
        card = {"id": name, "object": "model", "created": _timestamp(entry.get("modified_at")), "owned_by": owner}
        if entry.get("notice"):  # e.g. the in-box engine's "base model, not instruction-tuned"
            card["notice"] = entry["notice"]
        data.append(card)
    return {"object": "list", "data": data}


def _timestamp(value: Any) -> int:
    from datetime import datetime

    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    return int(time.time())


def embedding_response(result: dict[str, Any], model: str, encoding_format: str) -> dict[str, Any]:
    """Ollama `/api/embed` → OpenAI embeddings list (floats, or base64 little-endian float32)."""
    data = []
    for index, vector in enumerate(result.get("embeddings") or []):
        if encoding_format == "base64":
            encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            encoded = vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = int(result.get("prompt_eval_count") or 0)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
