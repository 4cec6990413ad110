"""The Chat tab: streams a reply through `gateway.router.chat`, the same router the API uses."""

from __future__ import annotations

import html
import logging
import time
from typing import Any, AsyncIterator

import gradio as gr

from ollabridge.config import Settings
from ollabridge.errors import BackendError, GatewayError, ModelNotFound, NoBackend
from ollabridge.gateway import Gateway

log = logging.getLogger("ollabridge.ui")

KIND_LABELS = {"node": "GPU node", "ollama": "Ollama", "inbox": "in-box engine", "upstream": "upstream"}


# -- pure helpers (no Gradio) ------------------------------------------------------------
def model_label(entry: dict[str, Any]) -> str:
    name = entry.get("name") or entry.get("model") or "?"
    info = entry.get("ollabridge") or {}
    if info.get("kind") == "node":
        return f"{name}  ·  GPU ({info.get('backend')})"
    size = (entry.get("details") or {}).get("parameter_size")
    label = f"{name}  ·  {size}" if size else name
    return f"{label}  ·  base model, replies not coherent" if entry.get("notice") else label


def model_choices(models: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, value) pairs, GPU node models first."""
    ordered = sorted(models, key=lambda m: (m.get("ollabridge") or {}).get("kind") != "node")
    return [(model_label(m), m.get("name") or m.get("model")) for m in ordered if m.get("name") or m.get("model")]


def request_body(model: str, convo: list[dict[str, str]], system: str, temperature: float,
                 max_tokens: int | float | None) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system.strip()}] if system and system.strip() else []) + convo
    options: dict[str, Any] = {"temperature": float(temperature)}
    if max_tokens:
        options["num_predict"] = int(max_tokens)
    return {"model": model, "messages": messages, "stream": True, "options": options}


def readable_error(exc: BaseException) -> str:
    """A readable message for the chat; never a stack trace."""
    if isinstance(exc, ModelNotFound):
        title = "Model not available"
    elif isinstance(exc, NoBackend):
        title = "No backend can take this right now"
    elif isinstance(exc, BackendError):
        title = f"The backend{f' {exc.backend}' if exc.backend else ''} failed"
    elif isinstance(exc, GatewayError):
        title = "Request refused"
    else:
        return f"⚠️ **Something went wrong** — {type(exc).__name__}. The gateway log has the details."
    return f"⚠️ **{title}** — {exc.message}"


def meta_line(served: dict[str, Any], done: dict[str, Any] | None, started: float,
              first_token_at: float | None, chunks: int) -> str:
    backend = served.get("backend") or "?"
    kind = KIND_LABELS.get(served.get("kind") or "", served.get("kind") or "")
    if kind == "Ollama" and backend == "inbox":
        kind = KIND_LABELS["inbox"]
    parts = [f"⚡ {backend}" + (f" ({kind})" if kind and kind.lower() != backend.lower() else "")]
    tokens = int((done or {}).get("eval_count") or 0) or chunks
    duration_ns = (done or {}).get("eval_duration") or 0
    end = time.monotonic()
    if tokens and duration_ns:
        parts.append(f"{tokens / (duration_ns / 1e9):.1f} tok/s")
    elif tokens and first_token_at is not None:
        parts.append(f"{tokens / max(end - first_token_at, 1e-3):.1f} tok/s")
    parts.append(f"{tokens} tokens")
    if first_token_at is not None:
        parts.append(f"first token {first_token_at - started:.2f}s")
    return "\n\n<span class=\"ob-meta\">" + html.escape(" · ".join(parts)) + "</span>"


async def reply(gateway: Gateway, message: str, shown: list[dict], convo: list[dict[str, str]], model: str,
                system: str, temperature: float, max_tokens: float
                ) -> AsyncIterator[tuple[list[dict], list[dict[str, str]], str]]:
    """Yield (chatbot value, conversation state, textbox value) as the reply streams in."""
    message = (message or "").strip()
    shown, convo = list(shown or []), list(convo or [])
    if not message:
        yield shown, convo, ""
        return
    shown.append({"role": "user", "content": message})
    convo.append({"role": "user", "content": message})
    if not model:
        shown.append({"role": "assistant", "content": "⚠️ **No model to use** — no backend lists a model yet. "
                      "If the engine is starting, wait a moment and press ↻ next to the model picker."})
        yield shown, convo[:-1], ""
        return
    shown.append({"role": "assistant", "content": ""})
    yield shown, convo, ""
    served: dict[str, Any] = {}
    text, chunks, done = "", 0, None
    started, first_at = time.monotonic(), None
    stream = gateway.router.chat(request_body(model, convo, system, temperature, max_tokens), served=served)
    try:
        async for chunk in stream:
            piece = (chunk.get("message") or {}).get("content") or ""
            if piece:
                if first_at is None:
                    first_at = time.monotonic()
                text += piece
                chunks += 1
                shown[-1] = {"role": "assistant", "content": text}
                yield shown, convo, ""
            if chunk.get("done"):
                done = chunk
    except Exception as exc:  # noqa: BLE001 — every failure becomes a message in the chat
        if not isinstance(exc, GatewayError):
            log.exception("chat in the UI failed")
        note = readable_error(exc)
        shown[-1] = {"role": "assistant", "content": f"{text}\n\n{note}" if text else note}
        # A failed turn leaves the conversation as it was, so the next message starts clean.
        yield shown, (convo + [{"role": "assistant", "content": text}]) if text else convo[:-1], ""
        return
    finally:
        await stream.aclose()
    shown[-1] = {"role": "assistant", "content": text + meta_line(served, done, started, first_at, chunks)}
    convo.append({"role": "assistant", "content": text})
    yield shown, convo, ""


# -- the tab -----------------------------------------------------------------------------
def build(blocks: gr.Blocks, gateway: Gateway, settings: Settings) -> None:
    convo = gr.State([])
    with gr.Row(equal_height=False, elem_id="chat-row"):
        with gr.Column(scale=3, min_width=280):
            with gr.Row(equal_height=True, elem_classes="ob-model-row"):
                model = gr.Dropdown(label="Model", elem_id="chat-model", choices=[], scale=8, min_width=180,
                                    show_label=False, info=None, container=False)
                refresh = gr.Button("↻ Models", elem_id="chat-models-refresh", size="sm", scale=1, min_width=90)
            chatbot = gr.Chatbot(elem_id="chatbot", height="58vh", min_height=300, max_height=640, show_label=False,
                                 layout="bubble", buttons=["copy"], feedback_options=None,
                                 placeholder="### Ask anything\nReplies stream from this gateway's models. "
                                             "The line under each reply says which backend answered and how fast.")
            with gr.Row(equal_height=True, elem_classes="ob-input-row"):
                message = gr.Textbox(elem_id="chat-input", show_label=False, placeholder="Type a message…",
                                     lines=1, max_lines=8, scale=6, min_width=200, container=False)
                send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=0, min_width=84)
            with gr.Row(elem_classes="ob-actions"):
                stop = gr.Button("■ Stop", variant="stop", elem_id="chat-stop", size="sm", scale=0, min_width=84)
                clear = gr.Button("Clear chat", elem_id="chat-clear", size="sm", scale=0, min_width=96)
        with gr.Column(scale=1, min_width=240):
            with gr.Accordion("Settings", open=True, elem_id="chat-settings"):
                system = gr.Textbox(label="System prompt", elem_id="chat-system", lines=3, max_lines=10,
                                    placeholder="You are a helpful assistant.")
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature", elem_id="chat-temp")
                max_tokens = gr.Slider(16, 4096, value=512, step=16, label="Max tokens",
                                       elem_id="chat-max-tokens")
                gr.Markdown("GPU node models are listed first in the picker and marked **GPU**.",
                            elem_classes="ob-note")

    async def load_models(current: str | None):
        choices = model_choices(await gateway.router.models())
        values = [value for _, value in choices]
        if current in values:
            chosen = current
        elif values:
            resolved = await gateway.router.resolve_model(None)
            chosen = resolved if resolved in values else values[0]
        else:
            chosen = None
        return gr.Dropdown(choices=choices, value=chosen)

    async def respond(text, shown, state, model_name, system_prompt, temp, max_tok):
        async for update in reply(gateway, text, shown, state, model_name, system_prompt, temp, max_tok):
            yield update

    blocks.load(load_models, model, model, queue=False, api_visibility="private")
    refresh.click(load_models, model, model, queue=False, api_visibility="private")
    inputs = [message, chatbot, convo, model, system, temperature, max_tokens]
    outputs = [chatbot, convo, message]
    events = [trigger(respond, inputs, outputs, concurrency_limit=None, show_progress="minimal",
                      api_visibility="private")
              for trigger in (send.click, message.submit)]
    stop.click(None, None, None, cancels=events, queue=False)
    clear.click(lambda: ([], [], ""), None, outputs, cancels=events, queue=False, api_visibility="private")
    chatbot.clear(lambda: [], None, convo, cancels=events, queue=False, api_visibility="private")
