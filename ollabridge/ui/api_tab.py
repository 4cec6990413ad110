"""The API tab: copy-ready snippets on this Space's own URL and the 3D Avatar Chatbot settings."""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from ollabridge.config import Settings
from ollabridge.gateway import Gateway


# -- pure helpers (no Gradio) ------------------------------------------------------------
def public_base_url(settings: Settings, headers: dict[str, str] | None = None, scheme: str = "http") -> str:
    """This deployment's URL: OLLABRIDGE_PUBLIC_URL, else the Space's host, else what the browser used."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    space_host = os.environ.get("SPACE_HOST", "").split(",")[0].strip()
    if space_host:
        return f"https://{space_host}"
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    host = (headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860").split(",")[0].strip()
    proto = (headers.get("x-forwarded-proto") or scheme or "http").split(",")[0].strip()
    return f"{proto}://{host}"


KEY_PLACEHOLDER = "<your API key>"


def curl_snippet(base: str, model: str, keyed: bool = False) -> str:
    auth = ' -H "Authorization: Bearer $OLLABRIDGE_API_KEY"' if keyed else ""
    header = '  -H "Authorization: Bearer $OLLABRIDGE_API_KEY" \\\n' if keyed else ""
    return f"""curl {base}/health
curl {base}/ollama/v1/models{auth}
curl -X POST {base}/ollama/v1/chat/completions \\
{header}  -H "Content-Type: application/json" \\
  -d '{{
    "model": "{model}",
    "messages": [{{"role": "user", "content": "Hello!"}}],
    "stream": false
  }}'"""


def python_snippet(base: str, model: str, keyed: bool = False) -> str:
    return f"""# pip install openai
from openai import OpenAI

client = OpenAI(
    base_url="{base}/ollama/v1",
    api_key="{KEY_PLACEHOLDER if keyed else 'not-needed'}",
)
response = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Hello!"}}],
)
print(response.choices[0].message.content)"""


def js_snippet(base: str, model: str, keyed: bool = False) -> str:
    auth = f'"Authorization": "Bearer {KEY_PLACEHOLDER}", ' if keyed else ""
    return f"""// fetch, in a browser or Node 18+
const response = await fetch(
  "{base}/ollama/v1/chat/completions",
  {{
    method: "POST",
    headers: {{ {auth}"Content-Type": "application/json" }},
    body: JSON.stringify({{
      model: "{model}",
      messages: [{{ role: "user", content: "Hello!" }}],
      stream: false,
    }}),
  }}
);
const data = await response.json();
console.log(data.choices[0].message.content);"""


def avatar_table(base: str, model: str, keyed: bool = False) -> str:
    return f"""| Setting | Value |
|---|---|
| Provider | Custom / OpenAI-compatible |
| Base URL | `{base}/ollama/v1` |
| Model | `{model}` |
| API Key | {"your API key" if keyed else "(leave empty)"} |"""


def endpoints_table(base: str) -> str:
    """Every endpoint, relative to `base` (WebSocket ones on ws:// or wss://)."""
    rows = [("POST", "/ollama/v1/chat/completions", "OpenAI-compatible chat completions (streaming + non-streaming)"),
            ("GET", "/ollama/v1/models", "List available models (OpenAI format)"),
            ("POST", "/ollama/api/chat", "Ollama native chat endpoint (passthrough)"),
            ("GET", "/ollama/api/tags", "List models (Ollama native format)"),
            ("POST", "/ollama/api/embeddings", "Generate text embeddings"),
            ("GET", "/health", "Gateway health + relay statistics"),
            ("GET", "/ollama/status", "Ollama + relay node status"),
            ("WS", "/relay/connect", "WebSocket relay for GPU boost nodes"),
            ("POST", "/device/start", "Start device pairing flow")]
    ws_base = "ws" + base[len("http"):] if base.startswith("http") else base
    lines = [f"All paths are relative to `{base}` (WebSocket: `{ws_base}`).", "",
             "| Method | Path | Description |", "|---|---|---|"]
    lines += [f"| {m} | `{p}` | {d} |" for m, p, d in rows]
    return "\n".join(lines)


def intro(base: str, keyed: bool = False) -> str:
    key = ("send your API key as `Authorization: Bearer <key>` (its owner mints keys in the Keys tab)"
           if keyed else "no API key needed")
    return (f"Base URL for OpenAI clients: **`{base}/ollama/v1`** — {key}. "
            f"Native Ollama clients use `{base}/ollama` as their host. "
            f"Every endpoint is described in the interactive <a href=\"{base}/docs\" target=\"_blank\">"
            f"API docs (/docs)</a>.")


def render(base: str, model: str, keyed: bool = False) -> tuple[str, str, str, str, str, str]:
    """The tab's texts; `keyed`: the API needs a key (any configured or minted)."""
    return (intro(base, keyed), curl_snippet(base, model, keyed), python_snippet(base, model, keyed),
            js_snippet(base, model, keyed), avatar_table(base, model, keyed), endpoints_table(base))


# -- the tab -----------------------------------------------------------------------------
def build(blocks: gr.Blocks, gateway: Gateway, settings: Settings) -> None:
    base0, model0 = public_base_url(settings), settings.default_model
    first = render(base0, model0, gateway.keys.enabled)
    head = gr.Markdown(first[0], elem_id="api-intro")
    with gr.Tabs():
        with gr.Tab("curl"):
            curl = gr.Code(first[1], language="shell", elem_id="api-curl", interactive=False,
                           show_label=False, buttons=["copy"], wrap_lines=True)
        with gr.Tab("Python"):
            python = gr.Code(first[2], language="python", elem_id="api-python", interactive=False,
                             show_label=False, buttons=["copy"], wrap_lines=True)
        with gr.Tab("JavaScript"):
            js = gr.Code(first[3], language="javascript", elem_id="api-js", interactive=False,
                         show_label=False, buttons=["copy"], wrap_lines=True)
    gr.Markdown("### 3D Avatar Chatbot\nIn the chatbot's **Settings** panel, set:")
    avatar = gr.Markdown(first[4], elem_id="api-avatar", elem_classes="ob-scroll")
    gr.Markdown("### Endpoints")
    endpoints = gr.Markdown(first[5], elem_id="api-endpoints", elem_classes="ob-scroll")

    async def on_load(request: gr.Request):
        headers: dict[str, Any] = dict(request.headers) if request is not None else {}
        scheme = getattr(getattr(request, "url", None), "scheme", "http") if request is not None else "http"
        base = public_base_url(settings, headers, scheme)
        try:
            model = await gateway.router.resolve_model(None)
        except Exception:  # noqa: BLE001 — the snippets still make sense with the default name
            model = settings.default_model
        return render(base, model, gateway.keys.enabled)

    blocks.load(on_load, None, [head, curl, python, js, avatar, endpoints], queue=False,
                api_visibility="private")
