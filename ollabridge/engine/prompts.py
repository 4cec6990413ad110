"""Chat messages -> prompt text, in one of three styles.

* ``jinja``  - the GGUF's own ``tokenizer.chat_template`` (rendered by llama-cpp-python's
  Jinja2ChatFormatter; tools and tool messages are passed through to it).
* ``gemma``  - Gemma's turn format (the bundled Gemma 3 270M has no template); system text is
  folded into the first user turn, as Gemma's own template does.
* ``chatml`` - the fallback for any other GGUF without a template.

In the two built-in styles a ``tool`` message becomes a user turn ("Tool result ...") and an
assistant's ``tool_calls`` are written out as JSON, so any conversation renders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

GEMMA_STOP = "<end_of_turn>"
CHATML_STOP = "<|im_end|>"

# Shown as `template` in /api/show for the built-in styles (Ollama's Go-template syntax).
GO_TEMPLATES = {
    "gemma": ("{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model"
              "{{ else }}user{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"),
    "chatml": ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
               "<|im_start|>assistant\n"),
}


@dataclass
class RenderedPrompt:
    text: str
    stops: list[str]
    add_bos: bool  # False when the template already wrote the BOS token


def chat_style(metadata: dict[str, str], builtin: bool) -> str:
    """Pick the prompt style for a model from its GGUF metadata."""
    if not builtin and metadata.get("tokenizer.chat_template"):
        return "jinja"
    if metadata.get("general.architecture", "").startswith("gemma"):
        return "gemma"
    return "chatml"


def _arguments(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def plain_messages(messages: list[dict]) -> list[dict]:
    """Ollama messages -> [{role, content}] with only system/user/assistant roles."""
    out = []
    for m in messages:
        role, content = m.get("role") or "user", m.get("content") or ""
        if role == "tool":
            name = m.get("tool_name") or m.get("name")
            role, content = "user", f"Tool result{f' ({name})' if name else ''}: {content}"
        elif role == "assistant" and m.get("tool_calls"):
            calls = [{"name": (c.get("function") or {}).get("name"),
                      "arguments": _arguments((c.get("function") or {}).get("arguments"))}
                     for c in m["tool_calls"]]
            content = (content + "\n" if content else "") + json.dumps(calls[0] if len(calls) == 1 else calls)
        elif role not in ("system", "user", "assistant"):
            role = "user"
        out.append({"role": role, "content": content})
    return out


def render_gemma(messages: list[dict]) -> RenderedPrompt:
    msgs = plain_messages(messages)
    system = "\n\n".join(m["content"] for m in msgs if m["role"] == "system" and m["content"])
    turns = [m for m in msgs if m["role"] != "system"]
    if system:
        if turns and turns[0]["role"] == "user":
            turns[0] = {"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}
        else:
            turns.insert(0, {"role": "user", "content": system})
    text = "".join(f"<start_of_turn>{'model' if m['role'] == 'assistant' else 'user'}\n"
                   f"{m['content']}{GEMMA_STOP}\n" for m in turns)
    return RenderedPrompt(text + "<start_of_turn>model\n", [GEMMA_STOP], add_bos=True)


def render_chatml(messages: list[dict]) -> RenderedPrompt:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}{CHATML_STOP}\n" for m in plain_messages(messages))
    return RenderedPrompt(text + "<|im_start|>assistant\n", [CHATML_STOP], add_bos=True)


def jinja_messages(messages: list[dict]) -> list[dict]:
    """Ollama messages in the OpenAI-like shape HF chat templates expect."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.get("role") or "user", "content": m.get("content") or ""}
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"type": "function", "function": {
                "name": (c.get("function") or {}).get("name"),
                "arguments": _arguments((c.get("function") or {}).get("arguments"))}}
                for c in m["tool_calls"]]
        if m.get("tool_name"):
            msg["name"] = m["tool_name"]
        out.append(msg)
    return out


def render_chat(style: str, messages: list[dict], tools: list[dict] | None = None,
                formatter: Any = None) -> RenderedPrompt:
    """Render `messages` (plain dicts in Ollama's shape) for the model. ValueError on template errors."""
    if style == "gemma":
        return render_gemma(messages)
    if style == "chatml":
        return render_chatml(messages)
    try:
        result = formatter(messages=jinja_messages(messages), tools=tools or None)
    except Exception as exc:  # jinja errors, raise_exception() in templates
        raise ValueError(f"chat template error: {exc}") from None
    stops = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
    return RenderedPrompt(result.prompt, [s for s in stops if s], add_bos=not result.added_special)
