"""Build the Blocks app from its tabs (Chat, Status, Pair a device, Keys, API) and mount it on the
gateway's FastAPI app; on a Space with Hugging Face OAuth, a sign-in button for its owners.

Every tab calls the gateway's own services (router, health, status, pairing, hub, keys): the UI is
one more client of the same code the API uses, never a second path. A chat is an API request: the
Chat tab sends it through the app itself, in-process (edge_call.py), so the edge's rules apply.
"""

from __future__ import annotations

import json

import gradio as gr
from fastapi import FastAPI, HTTPException, Request
from starlette.routing import BaseRoute, Match

from ollabridge import __version__
from ollabridge.config import Settings
from ollabridge.gateway import Gateway
from ollabridge.ui import api_tab, chat, keys, owner, pair, status

# System fonts only: nothing is fetched from outside the Space when the page loads.
SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial",
        "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]

CSS = """
.gradio-container { max-width: min(1180px, 100vw) !important; margin: 0 auto !important; }
#ob-header { display: grid; grid-template-columns: auto 1fr auto; align-items: center; gap: 6px 14px;
  padding: 6px 2px 2px; }
#ob-header .ob-logo { line-height: 0; }
#ob-header h1 { margin: 0; font-size: 1.55rem; font-weight: 700; letter-spacing: -0.01em; }
#ob-header p { margin: 2px 0 0; color: var(--body-text-color-subdued); font-size: 0.92rem; }
#ob-header .ob-links { display: flex; gap: 8px; flex-wrap: wrap; }
#ob-header .ob-links a { text-decoration: none; font-size: 0.85rem; padding: 4px 10px; border-radius: 999px;
  border: 1px solid var(--border-color-primary); color: var(--body-text-color); }
#ob-header .ob-links a:hover { border-color: var(--color-accent); color: var(--color-accent); }
.ob-meta { color: var(--body-text-color-subdued); font-size: 0.8em; }
.ob-cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(165px, 1fr)); gap: 10px; }
.ob-card { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 10px 14px;
  background: var(--block-background-fill); }
.ob-card .ob-k { font-size: 0.75rem; text-transform: uppercase; letter-spacing: 0.06em;
  color: var(--body-text-color-subdued); }
.ob-card .ob-v { font-size: 1.25rem; font-weight: 650; margin-top: 2px; overflow-wrap: anywhere; }
.ob-card .ob-s { font-size: 0.82rem; color: var(--body-text-color-subdued); margin-top: 2px;
  overflow-wrap: anywhere; }
.ob-ok { color: #16a34a; } .ob-warn { color: #d97706; } .ob-bad { color: #dc2626; }
.ob-bar { height: 8px; border-radius: 4px; background: var(--border-color-primary); overflow: hidden; }
.ob-bar > div { height: 100%; background: var(--color-accent); }
.ob-charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 10px; margin-top: 10px; }
.ob-chart { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 10px 14px;
  background: var(--block-background-fill); min-width: 0; }
.ob-chart-head, .ob-chart-axis { display: flex; justify-content: space-between; gap: 8px; }
.ob-chart .ob-k { font-size: 0.75rem; text-transform: uppercase; letter-spacing: 0.06em;
  color: var(--body-text-color-subdued); }
.ob-chart svg { display: block; width: 100%; height: 120px; margin-top: 6px; overflow: visible; }
.ob-chart .ob-grid { stroke: var(--border-color-primary); stroke-width: 1; }
.ob-chart-axis, .ob-chart .ob-s { font-size: 0.75rem; color: var(--body-text-color-subdued); }
.ob-chart-legend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 0.8rem; margin-top: 4px; }
.ob-legend { display: inline-flex; align-items: center; gap: 5px; overflow-wrap: anywhere; }
.ob-legend i { display: inline-block; width: 10px; height: 3px; border-radius: 2px; }
.ob-kv { margin-top: 8px; border-collapse: collapse; font-size: 0.9rem; }
.ob-kv, .ob-kv tr, .ob-kv th, .ob-kv td { border: 0 !important; background: none !important; }
.ob-kv th { text-align: left; padding: 2px 14px 2px 0; color: var(--body-text-color-subdued); font-weight: 500;
  vertical-align: top; }
.ob-kv td { padding: 2px 0; overflow-wrap: anywhere; }
.ob-note { font-size: 0.85rem; color: var(--body-text-color-subdued); }
.ob-msg-ok { border-left: 4px solid #16a34a; padding: 8px 12px; border-radius: 6px;
  background: color-mix(in srgb, #16a34a 8%, transparent); }
.ob-msg-err { border-left: 4px solid #dc2626; padding: 8px 12px; border-radius: 6px;
  background: color-mix(in srgb, #dc2626 8%, transparent); }
.ob-msg-info { border-left: 4px solid var(--color-accent); padding: 8px 12px; border-radius: 6px;
  background: color-mix(in srgb, var(--color-accent) 8%, transparent); }
.gradio-container, .gradio-container .main > .wrap { min-width: 0 !important; }
.gradio-container .main, .gradio-container main, .gradio-container .tabs, .gradio-container .tabitem,
.ob-table, .ob-scroll { min-width: 0 !important; max-width: 100% !important; }
.ob-table table { min-width: 560px; font-family: var(--font) !important; }
.ob-table .cell-wrap, .ob-table th, .ob-table td { font-family: var(--font) !important; }
.ob-bottom { align-items: flex-end !important; }
.ob-scroll th { white-space: nowrap; }
.gradio-container button { white-space: nowrap; }
.gradio-container button.stop { color: #dc2626 !important; }
.gradio-container .table-wrap { overflow-x: auto !important; }
.gradio-container .prose code { overflow-wrap: anywhere; }
#status-nodes, #status-models, #status-backends { max-width: 100%; overflow-x: auto; }
.ob-scroll table { display: block; overflow-x: auto; max-width: 100%; }
.ob-model-row { align-items: center; }
.ob-input-row { align-items: stretch; }
.ob-input-row button { min-height: 44px; }
#chat-input textarea { border: 1px solid var(--border-color-primary) !important; border-radius: 10px !important;
  padding: 10px 12px !important; min-height: 44px; background: var(--input-background-fill) !important; }
#chat-input textarea:focus { border-color: var(--color-accent) !important; }
.ob-actions { justify-content: flex-end; gap: 8px; }
#ob-account { justify-content: flex-end; }
@media (max-width: 640px) {
  #ob-tabs .tab-container button { padding-left: 8px; padding-right: 8px; }
  #ob-header h1 { font-size: 1.25rem; }
  #ob-header { grid-template-columns: auto 1fr; }
  #ob-header .ob-links { grid-column: 1 / -1; }
  #ob-header p { font-size: 0.85rem; }
  .gradio-container .main.fillable { padding-left: 10px !important; padding-right: 10px !important; }
}
"""

LOGO = ('<svg width="38" height="38" viewBox="0 0 48 48" aria-hidden="true"><rect width="48" height="48" rx="12" '
        'fill="var(--color-accent)"/><path d="M6 30h36M10 30v8M38 30v8M24 30v8M10 30c4-12 24-12 28 0" '
        'stroke="#fff" stroke-width="3.2" fill="none" stroke-linecap="round"/></svg>')

HEADER = f"""
<div id="ob-header">
  <div class="ob-logo">{LOGO}</div>
  <div>
    <h1>OllaBridge</h1>
    <p>An OpenAI-compatible LLM gateway on Ollama, with GPU nodes that dial in. v{__version__}</p>
  </div>
  <div class="ob-links">
    <a href="docs" target="_blank">API docs</a>
    <a href="health" target="_blank">/health</a>
  </div>
</div>
"""


SIGN_IN = "Sign in with Hugging Face"
# What Gradio's own button does on click (its OAuth routes), keeping the page's query (a node's
# ?user_code= link survives the sign-in).
SIGN_IN_JS = f"""(label) => {{
  const back = encodeURIComponent("/" + window.location.search);
  window.parent?.postMessage({{ type: "SET_SCROLLING", enabled: true }}, "*");
  window.location.assign((label === {json.dumps(SIGN_IN)} ? "/login/huggingface" : "/logout") + "?_target_url=" + back);
}}"""


def login_button() -> gr.LoginButton:
    """Gradio's "Sign in with Hugging Face" button (its presence turns on Gradio's OAuth routes), made
    outside any Blocks so that Gradio does not wire it: its own label check turns the session into
    objects and fails on a profile whose `orgs` is not empty. `build` wires it (SIGN_IN_JS, and a label
    from `gr.OAuthProfile`, the way every handler here learns who is signed in)."""
    return gr.LoginButton(SIGN_IN, elem_id="ob-login", size="sm", scale=0, min_width=220)


def signed_in(profile: gr.OAuthProfile | None):
    return gr.LoginButton(f"Logout ({profile.username})" if profile is not None else SIGN_IN)


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate",
                          font=SANS, font_mono=MONO)


def build(gateway: Gateway, settings: Settings, app: FastAPI) -> gr.Blocks:
    # A Space with hf_oauth: true; nowhere else (see owner.py).
    login = login_button() if owner.sign_in_available() else None
    with gr.Blocks(title="OllaBridge", analytics_enabled=False) as blocks:
        gr.HTML(HEADER, js_on_load=None)
        if login is not None:
            with gr.Row(elem_id="ob-account"):
                login.render()
            login.click(None, login, None, js=SIGN_IN_JS, api_visibility="private")
            blocks.load(signed_in, None, login, queue=False, api_visibility="private")
        with gr.Tabs(elem_id="ob-tabs") as tabs:
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat_tab:
                chat.build(blocks, gateway, settings, app)
            with gr.Tab("Status", id="status", elem_id="tab-status") as status_tab:
                status_timer = status.build(blocks, gateway, settings)
            with gr.Tab("Pair a device", id="pair", elem_id="tab-pair") as pair_tab:
                code, pair_timer = pair.build(blocks, gateway, settings)
            with gr.Tab("Keys", id="keys", elem_id="tab-keys") as keys_tab:
                keys.build(blocks, gateway, settings)
            with gr.Tab("API", id="api", elem_id="tab-api") as api_tab_:
                api_tab.build(blocks, gateway, settings)
        # Timers tick only while their tab is on screen.
        for tab, on in ((chat_tab, ()), (status_tab, (status_timer,)), (pair_tab, (pair_timer,)), (keys_tab, ()),
                        (api_tab_, ())):
            tab.select(lambda on=on: [gr.Timer(active=t in on) for t in (status_timer, pair_timer)], None,
                       [status_timer, pair_timer], queue=False, api_visibility="private")

        # A node's "Approve it at" link is /?user_code=XXXX-XXXX: open the Pair tab with the code filled in.
        def from_link(request: gr.Request):
            wanted = (request.query_params.get("user_code") or "").strip()[:40] if request is not None else ""
            if not wanted:
                return gr.skip(), gr.skip(), gr.skip()
            return gr.Tabs(selected="pair"), wanted, gr.Timer(active=True)

        blocks.load(from_link, None, [tabs, code, pair_timer], queue=False, api_visibility="private")
    return blocks


def keep_api_404s(app: FastAPI) -> None:
    """With the UI at "/", unknown API paths would fall through to Gradio. Answer them as the API does:
    404 (or 405 when the path exists with another method), in the caller's error format."""
    own: list[BaseRoute] = []

    async def api_not_found(request: Request):
        for route in app.router.routes:
            if not any(route is o for o in own) and route.matches(request.scope)[0] == Match.PARTIAL:
                raise HTTPException(405, "Method Not Allowed")
        raise HTTPException(404, "Not Found")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    for prefix in ("/ollama", "/v1", "/relay", "/device"):
        app.add_api_route(prefix + "/{rest:path}", api_not_found, methods=methods, include_in_schema=False)
        own.append(app.router.routes[-1])


def mount(app: FastAPI, gateway: Gateway, settings: Settings) -> FastAPI:
    blocks = build(gateway, settings, app)
    keep_api_404s(app)
    return gr.mount_gradio_app(app, blocks, path="/", footer_links=[], run_history=False, ssr_mode=False,
                               mcp_server=False, enable_monitoring=False, pwa=False, show_error=True,
                               theme=theme(), css=CSS)
