"""The Status tab: gateway health, the active engine, models, GPU nodes and totals, the queue per
caller, streams resumed and stalls, each backend's measured speed, and live charts of the last 15
minutes (tokens/s per backend, requests in flight and queued), refreshed on a timer.

Everything comes from `gateway.views` (`health()`, `status()`, `history()`), `gateway.router` and the
relay hub: the same data `/health` and `/ollama/status` return.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from typing import Any

import gradio as gr

from ollabridge.config import Settings
from ollabridge.errors import GatewayError
from ollabridge.gateway import Gateway
from ollabridge.ui.chart import history_charts

log = logging.getLogger("ollabridge.ui")

REFRESH_S = 3.0
NODE_HEADERS = ["Node", "State", "GPU", "Models", "Slots in use", "Tokens/s", "Last seen"]
MODEL_HEADERS = ["Model", "Served by", "Kind", "Size", "Loaded"]
BACKEND_HEADERS = ["Backend", "Kind", "Healthy", "In flight", "Requests", "Failed", "Detail"]
SPEED_HEADERS = ["Backend", "Model", "Tokens/s", "First token (s)", "Streams measured"]
# How the router's stream counts read in the Streams card; a count without a label here shows by its name.
STREAM_LABELS = {"resumed": "resumed", "resume_failed": "lost past resuming", "stall_probes_alive": "stalls probed alive",
                 "stalls_lost": "stalled nodes lost", "affinity_hits": "affinity hits"}


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _size(num: Any) -> str:
    if not isinstance(num, (int, float)) or num <= 0:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if num < 1024 or unit == "TB":
            return f"{num:.0f} {unit}" if unit in ("B", "KB") else f"{num:.1f} {unit}"
        num /= 1024
    return ""


def _card(key: str, value: str, sub: str = "", cls: str = "") -> str:
    return (f'<div class="ob-card"><div class="ob-k">{_esc(key)}</div>'
            f'<div class="ob-v {cls}">{value}</div><div class="ob-s">{sub}</div></div>')


def node_rows(gateway: Gateway, live: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per GPU node: paired nodes (online or not) from the pairing service, joined with the
    relay hub's live figures (slots in use, tokens/s); connected nodes the store does not know last."""
    from ollabridge.ui.pair import gpu_text, when

    by_id = {n.get("node_id"): n for n in live or []}
    try:
        paired = gateway.pairing.nodes() if gateway.pairing is not None else []
    except GatewayError:  # the shared state (Redis) is down: the live nodes only
        paired = []
    rows: list[list[Any]] = []
    for node in paired + [n for n in live or [] if n.get("node_id") not in {p.get("node_id") for p in paired}]:
        info = {**node, **by_id.get(node.get("node_id"), {})}
        online = bool(info.get("connected"))
        slots = info.get("slots")
        tps = info.get("tokens_per_s")
        rows.append([info.get("name") or info.get("node_id"), "● online" if online else "○ offline",
                     gpu_text(info), ", ".join(str(m) for m in info.get("models") or []) or "—",
                     f"{info.get('in_flight') or 0} / {slots if slots else '—'}",
                     f"{tps:.1f}" if isinstance(tps, (int, float)) and tps else "—",
                     "now" if online else when(info.get("last_seen"))])
    return rows


class _Shared:
    """One snapshot at a time, reused for a moment: many open Status tabs cost the backends one poll."""

    def __init__(self, ttl: float = 1.5) -> None:
        self.ttl, self.at, self.value = ttl, 0.0, None
        self.lock: asyncio.Lock | None = None

    async def get(self, gateway: Gateway):
        self.lock = self.lock or asyncio.Lock()
        async with self.lock:
            if self.value is None or time.monotonic() - self.at > self.ttl:
                self.value = await snapshot(gateway)
                self.at = time.monotonic()
            return self.value


async def snapshot(gateway: Gateway) -> tuple[str, list[list[Any]], list[list[Any]], list[list[Any]], str,
                                             list[list[Any]]]:
    """(cards HTML, nodes rows, models rows, backends rows, charts HTML, speed rows) for the tab."""
    health = await gateway.views.health()
    status = await gateway.views.status()
    models = await gateway.router.models()
    loaded = {m.get("name") or m.get("model") for m in await gateway.router.loaded()}
    relay = status.get("relay") or {}
    engine = status.get("engine") or health.get("engine") or {}
    backends = gateway.router.backends
    # Nodes' figures from the hub, which keeps them after a node leaves; the rest from the router.
    local = [b for b in backends if b.kind != "node"]
    nodes_in = [b for b in backends if b.kind == "node"]

    def total(attr: str, relay_key: str) -> int:
        here = sum(getattr(b.stats, attr) for b in local)
        return here + int(relay.get(relay_key, sum(getattr(b.stats, attr) for b in nodes_in)) or 0)

    requests, failed, tokens = total("total", "requests_total"), total("failed", "requests_failed"), \
        total("tokens", "tokens_relayed")
    queue = health.get("queue") or {}

    ok = health.get("status") == "ok"
    active = engine.get("active", "none")
    ollama = status.get("ollama") or {}
    if active == "inbox" or "inbox" in str(ollama.get("version") or ""):
        engine_name = "In-box engine"  # llama.cpp, whether the gateway started it or was pointed at it
    else:
        engine_name = {"ollama": "Ollama", "none": "None"}.get(active, active)
    engine_state = engine.get("state") or ("running" if ollama.get("reachable") else "down")
    engine_cls = {"running": "ob-ok", "starting": "ob-warn"}.get(engine_state, "ob-bad")
    engine_sub = _esc(" · ".join(str(x) for x in (engine_state, ollama.get("version")) if x))
    if engine.get("url"):
        engine_sub += f"<br>{_esc(engine['url'])}"
    if engine.get("detail"):
        engine_sub += f"<br>{_esc(engine['detail'])}"
    nodes = node_rows(gateway, relay.get("nodes") or [])
    cards = [
        _card("Gateway", "Healthy" if ok else "Degraded", _esc(f"v{health.get('version')} · up {_uptime(health)}"),
              "ob-ok" if ok else "ob-warn"),
        _card("Engine", _esc(engine_name), engine_sub, engine_cls),
        _card("Models", str(len(models)), _esc(f"{len(loaded - {None})} loaded in memory")),
        _card("GPU nodes", str(relay.get("nodes_connected", len(nodes))),
              _esc(f"{relay.get('requests_in_flight', 0)} relayed requests in flight")),
        _card("Requests", str(requests),
              (f'<span class="{"ob-bad" if failed else ""}" id="status-failures">{failed} failed</span> · '
               + _esc(f"{health.get('requests_in_flight', 0)} in flight · {queue.get('waiting', 0)} queued"))),
        _card("Tokens", f"{tokens:,}", _esc(f"{int(relay.get('tokens_relayed') or 0):,} via GPU nodes")),
        _queue_card(queue),
        _streams_card(health.get("streams") or {}),
    ]
    html_out = f'<div class="ob-cards" id="status-cards">{"".join(cards)}</div>'
    html_out += _pulls(status, engine)
    if not nodes:
        html_out += ('<p class="ob-note" id="status-no-nodes">No GPU node is paired yet: run '
                     '<code>python -m ollabridge node --cloud &lt;this URL&gt;</code> on a GPU machine and approve '
                     'its code in <b>Pair a device</b>.</p>')
    html_out += (f'<p class="ob-note">Refreshed {time.strftime("%H:%M:%S")} UTC · every {REFRESH_S:g}s '
                 f"while this tab is open.</p>")
    model_rows = []
    for m in models:
        name = m.get("name") or m.get("model")
        info = m.get("ollabridge") or {}
        model_rows.append([name, info.get("backend", ""), "GPU node" if info.get("kind") == "node" else
                           info.get("kind", ""), _size(m.get("size")), "yes" if name in loaded else ""])
    backend_rows = [[e.get("name"), e.get("kind"), "yes" if e.get("healthy") else "no",
                     f"{e.get('in_flight', 0)} / {e.get('slots') if e.get('slots') is not None else '∞'}",
                     e.get("requests", 0), e.get("failed", 0), e.get("detail", "")]
                    for e in health.get("backends") or []]
    speed_rows = [[e.get("name"), model, f"{s.get('tokens_per_s', 0):.1f}", f"{s.get('ttft_s', 0):.2f}",
                   s.get("samples", 0)]
                  for e in health.get("backends") or [] for model, s in (e.get("speed") or {}).items()]
    charts = history_charts(gateway.views.history(), time.time())
    return html_out, nodes, model_rows, backend_rows, charts, speed_rows


def _queue_card(queue: dict[str, Any]) -> str:
    """The queue now: how many wait (of how many may), and who (callers as `/health` names them)."""
    by_caller = queue.get("by_caller") or {}
    who = " · ".join(f"{caller} {n}" for caller, n in by_caller.items()) or "nobody waits"
    return _card("Queue", f"{queue.get('waiting', 0)} / {queue.get('max', '?')}",
                 f'<span id="status-queue">{_esc(who)}</span>')


def _streams_card(streams: dict[str, Any]) -> str:
    """Streams resumed on another backend, and every other count the router keeps (stalls, affinity)."""
    others = " · ".join(f"{n:,} {STREAM_LABELS.get(k, k.replace('_', ' '))}" for k, n in streams.items()
                        if k != "resumed" and isinstance(n, (int, float)))
    return _card("Streams resumed", f"{int(streams.get('resumed') or 0):,}",
                 f'<span id="status-streams">{_esc(others)}</span>')


def _uptime(health: dict[str, Any]) -> str:
    secs = float(health.get("uptime_s") or 0)
    if secs < 120:
        return f"{secs:.0f}s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    return f"{secs / 3600:.1f} h"


def _pulls(status: dict[str, Any], engine: dict[str, Any]) -> str:
    """Progress of model pulls (OLLABRIDGE_MODELS) under way or failed, from `status()["pulls"]`."""
    snap = status.get("pulls") or {}
    pulls = snap.get("models", []) if isinstance(snap, dict) else list(snap)
    parts = []
    for pull in pulls:
        state = pull.get("state", "pulling")
        if state in ("done", "present"):
            continue
        pct = pull.get("percent")
        bar = (f'<div class="ob-bar"><div style="width:{max(0.0, min(100.0, float(pct))):.1f}%"></div></div>'
               if isinstance(pct, (int, float)) else "")
        label = f"{pull.get('model', '?')} — {state}"
        if pull.get("status"):
            label += f" ({pull['status']})"
        if isinstance(pct, (int, float)):
            label += f" · {pct:.0f}%"
        if pull.get("total"):
            label += f" of {_size(pull['total'])}"
        if pull.get("error"):
            label += f" · {pull['error']}"
        cls = "ob-bad" if state == "failed" else ""
        parts.append(f'<div class="ob-card"><div class="ob-k">Model pull</div>'
                     f'<div class="ob-s {cls}">{_esc(label)}</div>{bar}</div>')
    return f'<div class="ob-cards" style="margin-top:10px">{"".join(parts)}</div>' if parts else ""


def build(blocks: gr.Blocks, gateway: Gateway, settings: Settings) -> gr.Timer:
    cards = gr.HTML('<p class="ob-note">Loading…</p>', elem_id="status-html", js_on_load=None)
    charts = gr.HTML("", elem_id="status-charts", js_on_load=None)
    gr.Markdown("### GPU nodes")
    nodes = _table(NODE_HEADERS, "status-nodes", 320)
    with gr.Row():
        with gr.Column(min_width=300):
            gr.Markdown("### Models")
            models = _table(MODEL_HEADERS, "status-models", 360)
        with gr.Column(min_width=300):
            gr.Markdown("### Backends")
            backends = _table(BACKEND_HEADERS, "status-backends", 360)
    gr.Markdown("### Measured speed (moving averages, what routing chooses by)")
    speeds = _table(SPEED_HEADERS, "status-speeds", 280)
    refresh = gr.Button("Refresh now", size="sm", elem_id="status-refresh")
    timer = gr.Timer(REFRESH_S, active=False)
    shared = _Shared()

    async def update():
        try:
            html_out, node_data, model_data, backend_data, chart_html, speed_data = await shared.get(gateway)
        except Exception as exc:  # noqa: BLE001 — the tab says so instead of breaking
            log.exception("status snapshot failed")
            return (f'<div class="ob-msg-err">Status is unavailable right now: {_esc(type(exc).__name__)}.</div>',
                    gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        return (html_out, _frame(node_data, NODE_HEADERS), _frame(model_data, MODEL_HEADERS),
                _frame(backend_data, BACKEND_HEADERS), chart_html, _frame(speed_data, SPEED_HEADERS))

    outputs = [cards, nodes, models, backends, charts, speeds]
    kwargs = dict(show_progress="hidden", concurrency_limit=None, api_visibility="private")
    timer.tick(update, None, outputs, **kwargs)
    refresh.click(update, None, outputs, **kwargs)
    blocks.load(update, None, outputs, **kwargs)
    return timer


def _table(headers: list[str], elem_id: str, max_height: int) -> gr.Dataframe:
    return gr.Dataframe(headers=headers, value=[], elem_id=elem_id, interactive=False, wrap=True,
                        elem_classes="ob-table", column_count=len(headers), max_height=max_height)


def _frame(rows: list[list[Any]], headers: list[str]):
    return gr.Dataframe(value=rows, headers=headers)
