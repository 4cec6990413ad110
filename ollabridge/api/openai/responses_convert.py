"""Pure converters between the OpenAI Responses API and Ollama's native chat (data in, data out).

Modelled on Ollama's `openai/responses.go`, with what Codex needs besides: `developer` messages
become `system` (chat templates render only system), `namespace` tools are flattened for the model
as `<namespace>.<name>` and their calls go back as `name` + `namespace`, text sent beside tool calls
is kept, and `web_search` and other hosted tools are dropped (the gateway runs no tool).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Iterable

from ollabridge.api.openai.responses_protocol import InputItem, InputPart, ResponsesRequest, ResponsesTool
from ollabridge.api.reply import gather
from ollabridge.errors import BadRequest

EFFORTS: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                  "high": "high", "xhigh": "high", "max": "high"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# -- requests ---------------------------------------------------------------------------
def check_stateless(req: ResponsesRequest) -> None:
    """The gateway keeps no responses or conversations: say so instead of answering without them."""
    for field in ("previous_response_id", "conversation"):
        if getattr(req, field) is not None:
            raise BadRequest(f"'{field}' is not supported: this gateway is stateless (as Ollama's /v1/responses "
                             "is). Send the whole conversation in 'input'.", param=field)
    if getattr(req, "background", None):
        raise BadRequest("'background' is not supported: stream the response instead.", param="background")


def _parts(content: str | list[InputPart] | None, where: str) -> tuple[str, list[str]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for part in content:
        if part.type in ("input_text", "output_text", "text"):
            texts.append(part.text or "")
        elif part.type == "input_image":
            url = part.image_url or ""
            if not url.startswith("data:"):
                raise BadRequest("Images must be data URLs (data:image/png;base64,...): the gateway fetches "
                                 "nothing for a caller.", param=where)
            images.append(url.split(",", 1)[1] if "," in url else "")
        elif part.type == "input_file":
            raise BadRequest("File inputs are not supported.", param=where)
    return "".join(texts), images


def flat_tools(tools: Iterable[ResponsesTool]) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]]]:
    """Function tools as Ollama's; namespace members as `<namespace>.<name>` (with a map back)."""
    out: list[dict[str, Any]] = []
    namespaced: dict[str, tuple[str, str]] = {}

    def add(tool: ResponsesTool, name: str) -> None:
        function: dict[str, Any] = {"name": name, "parameters": tool.parameters or {"type": "object"}}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})

    for tool in tools:
        if tool.type == "function" and tool.name:
            add(tool, tool.name)
        elif tool.type == "namespace" and tool.name:
            for member in tool.tools or []:
                if member.name:
                    flat = f"{tool.name}.{member.name}"
                    namespaced[flat] = (tool.name, member.name)
                    add(member, flat)
    return out, namespaced


def _input(items: str | list[InputItem]) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call_id -> the tool's (flat) name
    thinking = ""
    for index, item in enumerate(items):
        kind = item.type or ("message" if item.role else None)
        where = f"input[{index}]"
        if kind == "message":
            text, images = _parts(item.content, where)
            role = "system" if item.role == "developer" else item.role or "user"
            message: dict[str, Any] = {"role": role, "content": text}
            if images:
                message["images"] = images
            if role == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            out.append(message)
        elif kind == "function_call":
            name = f"{item.namespace}.{item.name}" if item.namespace else item.name or ""
            call_id = item.call_id or new_id("call")
            names[call_id] = name
            try:
                arguments = json.loads(item.arguments or "{}")
            except ValueError:
                raise BadRequest(f"{where}.arguments is not valid JSON.", param=f"{where}.arguments") from None
            call = {"id": call_id, "function": {"name": name, "arguments": arguments}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call],
                            **({"thinking": thinking} if thinking else {})})
                thinking = ""
        elif kind == "function_call_output":
            text, images = _parts(item.output, where)
            tool: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": item.call_id or ""}
            if item.call_id in names:
                tool["tool_name"] = names[item.call_id]
            if images:
                tool["images"] = images
            out.append(tool)
        elif kind == "reasoning":
            thinking = item.encrypted_content or "".join(str(s.get("text") or "") for s in item.summary or [])
        elif kind in ("web_search_call", "file_search_call", "item_reference"):
            continue
        else:
            raise BadRequest(f"{where}: unknown input item type {kind!r}.", param=where)
    return out


def responses_request_to_ollama(req: ResponsesRequest, model: str) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """A Responses request → the body of Ollama's `POST /api/chat`, and the namespaced tools' map."""
    check_stateless(req)
    messages = _input(req.input)
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
    options: dict[str, Any] = {}
    for name, value in (("num_predict", req.max_output_tokens), ("temperature", req.temperature),
                        ("top_p", req.top_p)):
        if value is not None:
            options[name] = value
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, "options": options}
    namespaced: dict[str, tuple[str, str]] = {}
    if req.tools and req.tool_choice != "none":
        tools, namespaced = flat_tools(req.tools)
        if tools:
            body["tools"] = tools
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        body["format"] = fmt.schema_ or "json"
    elif fmt is not None and fmt.type == "json_object":
        body["format"] = "json"
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["think"] = EFFORTS[req.reasoning.effort]
    return body, namespaced


# -- answers ----------------------------------------------------------------------------
def usage(chunk: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = int(chunk.get("prompt_eval_count") or 0), int(chunk.get("eval_count") or 0)
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}


def function_call_item(call: dict[str, Any], namespaced: dict[str, tuple[str, str]], status: str) -> dict[str, Any]:
    fn = call.get("function") or {}
    name = fn.get("name", "")
    arguments = fn.get("arguments", {})
    item: dict[str, Any] = {"id": new_id("fc"), "type": "function_call", "status": status,
                            "call_id": call.get("id") or new_id("call"), "name": name,
                            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}
    if name in namespaced:
        item["namespace"], item["name"] = namespaced[name]
    return item


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}],
            "encrypted_content": text}


def response_object(req: ResponsesRequest, response_id: str, model: str, created_at: int, status: str,
                    output: list[dict[str, Any]], usage_: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Response object (streamed ones carry it in created / in_progress / completed / failed)."""
    return {"id": response_id, "object": "response", "created_at": created_at, "status": status, "model": model,
            "output": output, "usage": usage_, "error": error, "incomplete_details": None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature, "top_p": req.top_p,
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "tool_choice": req.tool_choice or "auto", "parallel_tool_calls": True,
            "text": {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)}
            if req.text is not None and req.text.format is not None else {"format": {"type": "text"}},
            "reasoning": req.reasoning.model_dump(exclude_none=True) if req.reasoning is not None else None,
            "previous_response_id": None, "store": False, "metadata": {}}


def aggregate_response(chunks: Iterable[dict[str, Any]], req: ResponsesRequest, model: str,
                       namespaced: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """All Ollama `/api/chat` objects of one reply → one Response."""
    reply = gather(chunks)
    output: list[dict[str, Any]] = []
    if reply.thinking:
        output.append(reasoning_item(new_id("rs"), reply.thinking))
    if reply.text or not reply.calls:
        output.append(message_item(new_id("msg"), reply.text))
    output.extend(function_call_item(call, namespaced, "completed") for call in reply.calls)
    return response_object(req, new_id("resp"), model, int(time.time()), "completed", output, usage(reply.last))
