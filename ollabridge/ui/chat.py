"""The Chat tab: streams a reply from the API's own `POST /ollama/api/chat`, called in-process with the
visitor's API key and address (ollabridge/ui/edge_call.py), so a chat on the page obeys every rule of
the API: keys, rate limits, the in-flight bound, the shutdown drain, metrics and the log line."""

from __future__ import annotations

import html
import logging
import time
from typing import Any, AsyncIterator

import gradio as gr

from ollabridge.config import Settings
from ollabridge.gateway import Gateway
from ollabridge.jsonwire import loads
from ollabridge.ui import edge_call

log = logging.getLogger("ollabridge.ui")

CHAT_PATH = "/ollama/api/chat"
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


TITLES = {400: "Request refused", 403: "Request refused", 404: "Model not available",
          413: "Message too long", 429: "Too many requests", 502: "The backend failed",
          503: "Not available right now", 504: "Timed out"}


def refusal(status: int, message: str, had_key: bool) -> str:
    """A readable line for an answer that is not a reply (the API's status and message); never a trace."""
    if status == 401:
        title = "API key not accepted" if had_key else "API key needed"
        if not had_key:
            message = "This gateway needs an API key to chat: enter yours under Settings (its owner mints them)."
    else:
        title = TITLES.get(status, "Something went wrong")
    return f"⚠️ **{title}** — {message or f'HTTP {status}'}"


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


async def reply(app: Any, visitor: edge_call.Visitor, message: str, shown: list[dict],
                convo: list[dict[str, str]], model: str, system: str, temperature: float, max_tokens: float
                ) -> AsyncIterator[tuple[list[dict], list[dict[str, str]], str]]:
    """Yield (chatbot value, conversation state, textbox value) as the reply streams in.

    The reply is a `POST /ollama/api/chat` through the gateway's own app (edge_call): the visitor's
    key and address meet the same keys, limits, drain, metrics and log line as any API call."""
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
    text, chunks, done, note = "", 0, None, None
    started, first_at = time.monotonic(), None
    answer = None
    try:
        answer = await edge_call.post(app, CHAT_PATH, request_body(model, convo, system, temperature, max_tokens),
                                      visitor)
        if answer.status != 200:
            note = refusal(answer.status, edge_call.error_text(await answer.read()), bool(visitor.key))
        else:
            async for line in answer.lines():
                chunk = loads(line)
                if chunk.get("error"):  # the stream failed after it began (a backend, the drain, a timeout)
                    note = f"⚠️ **The reply was cut** — {chunk['error']}"
                    break
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
        log.exception("chat in the UI failed")
        note = f"⚠️ **Something went wrong** — {type(exc).__name__}. The gateway log has the details."
    finally:
        if answer is not None:
            await answer.close()
    if note is not None:
        shown[-1] = {"role": "assistant", "content": f"{text}\n\n{note}" if text else note}
        # A failed turn leaves the conversation as it was, so the next message starts clean.
        yield shown, (convo + [{"role": "assistant", "content": text}]) if text else convo[:-1], ""
        return
    shown[-1] = {"role": "assistant", "content": text + meta_line(answer.served, done, started, first_at, chunks)}
    convo.append({"role": "assistant", "content": text})
    yield shown, convo, ""


# -- the tab -----------------------------------------------------------------------------
def key_note(gateway: Gateway) -> str:
    if gateway.keys.enabled:
        return ("🔑 **This gateway needs an API key to chat.** Enter yours above; its owner mints keys in the "
                "**Keys** tab. Chats here count against that key's limits, as API calls do.")
    return "No API key needed: this gateway's API is open."


def build(blocks: gr.Blocks, gateway: Gateway, settings: Settings, app: Any) -> None:
    """The tab; `app` is the gateway's ASGI app, which every chat is sent through."""
    convo = gr.State([])
    with gr.Row(equal_height=False, elem_id="chat-row"):
        with gr.Column(scale=3, min_width=280):
            with gr.Row(equal_height=True, elem_classes="ob-model-row"):
                model = gr.Dropdown(label="Model", elem_id="chat-model", choices=[], scale=8, min_width=180,
                                    allow_custom_value=True,
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
                api_key = gr.Textbox(label="API key", type="password", elem_id="chat-key", max_length=400,
                                     placeholder="obk_…")
                note = gr.Markdown(key_note(gateway), elem_id="chat-key-note", elem_classes="ob-note")
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

    async def respond(text, shown, state, model_name, system_prompt, temp, max_tok, key, request: gr.Request):
        visitor = edge_call.Visitor.of(request, key)
        async for update in reply(app, visitor, text, shown, state, model_name, system_prompt, temp, max_tok):
            yield update

    blocks.load(load_models, model, model, queue=False, api_visibility="private")
    blocks.load(lambda: key_note(gateway), None, note, queue=False, api_visibility="private")
    refresh.click(load_models, model, model, queue=False, api_visibility="private")
    inputs = [message, chatbot, convo, model, system, temperature, max_tokens, api_key]
    outputs = [chatbot, convo, message]
    events = [trigger(respond, inputs, outputs, concurrency_limit=None, show_progress="minimal",
                      api_visibility="private")
              for trigger in (send.click, message.submit)]
    stop.click(None, None, None, cancels=events, queue=False)
    clear.click(lambda: ([], [], ""), None, outputs, cancels=events, queue=False, api_visibility="private")
    chatbot.clear(lambda: [], None, convo, cancels=events, queue=False, api_visibility="private")
