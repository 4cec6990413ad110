"""The Pair a device tab: approve or deny a node's code with the admin token; list and revoke nodes.

It calls `gateway.pairing` (ollabridge.pairing.PairingService), the same service behind `/device/*`.
On a Space, an owner signed in with Hugging Face needs no admin token (ollabridge/ui/owner.py).
"""

from __future__ import annotations

import html
import logging
from datetime import datetime
from typing import Any

import gradio as gr

from ollabridge.config import Settings
from ollabridge.edge.context import client_address
from ollabridge.errors import GatewayError
from ollabridge.gateway import Gateway
from ollabridge.ui import owner

log = logging.getLogger("ollabridge.ui")

NODE_HEADERS = ["Name", "Node ID", "State", "GPU", "Models", "Slots in use", "Last seen"]
REFRESH_S = 5.0


def _esc(value: Any) -> str:
    return html.escape(str(value))


def msg(kind: str, text: str, tab: str = "pair") -> str:
    """A message box: kind is ok, err or info; `text` is escaped; its id is `<tab>-msg-<kind>`."""
    return f'<div class="ob-msg-{kind}" id="{tab}-msg-{kind}">{_esc(text)}</div>'


def gpu_text(entry: dict[str, Any]) -> str:
    gpu, vram = entry.get("gpu"), entry.get("vram_mb")
    if not gpu:
        return "—"
    return f"{gpu} ({vram / 1024:.0f} GB)" if isinstance(vram, (int, float)) and vram else str(gpu)


def when(iso: str | None) -> str:
    if not iso:
        return "never"
    try:
        ts = datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return str(iso)
    secs = max(0.0, datetime.now().timestamp() - ts)
    if secs < 15:
        return "just now"
    if secs < 3600:
        return f"{secs / 60:.0f} min ago" if secs >= 60 else f"{secs:.0f}s ago"
    if secs < 86400:
        return f"{secs / 3600:.1f} h ago"
    return iso.replace("T", " ").split("+")[0] + " UTC"


def offer_card(info: dict[str, Any]) -> str:
    """What a waiting device offers, shown before the owner approves it."""
    models = ", ".join(info.get("models") or []) or "not said"
    slots = info.get("slots") or "—"
    expires = int(info.get("expires_in") or 0)
    rows = [("Name", info.get("name")), ("Code", info.get("user_code")), ("GPU", gpu_text(info)),
            ("Models", models), ("Slots", slots), ("Agent", info.get("agent") or "—"),
            ("From", info.get("client") or "—"), ("Expires in", f"{expires // 60} min {expires % 60:02d} s")]
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return (f'<div class="ob-msg-info" id="pair-offer"><b>{_esc(info.get("name"))}</b> is waiting for approval.'
            f'<table class="ob-kv">{body}</table></div>')


def node_rows(nodes: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for n in nodes:
        slots = n.get("slots")
        rows.append([n.get("name"), n.get("node_id"), "● online" if n.get("connected") else "○ offline",
                     gpu_text(n), ", ".join(str(m) for m in n.get("models") or []) or "—",
                     f"{n.get('in_flight') or 0} / {slots if slots else '—'}",
                     "now" if n.get("connected") else when(n.get("last_seen"))])
    return rows


def node_choices(nodes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f"{n.get('name')} · {n.get('node_id')}", n.get("node_id")) for n in nodes]


def caller(request: gr.Request | None, hops: int) -> str:
    """The address of the browser behind a UI event, as the API's edge finds it (X-Forwarded-For per
    OLLABRIDGE_FORWARDED_HOPS): wrong admin tokens typed here count against it like the API's."""
    if request is None:
        return ""
    headers = request.headers
    forwarded = ",".join(headers.getlist("x-forwarded-for")) if hasattr(headers, "getlist") else \
        headers.get("x-forwarded-for")
    return client_address(request.client.host if request.client else "", forwarded or None, hops)


def build(blocks: gr.Blocks, gateway: Gateway, settings: Settings) -> tuple[gr.Textbox, gr.Timer]:
    pairing = gateway.pairing
    gr.Markdown("A GPU node started with `python -m ollabridge node --cloud <this URL>` shows an 8-letter code. "
                "Enter it with the admin token (`OLLABRIDGE_ADMIN_TOKEN`, or the one printed in the gateway's log "
                "at first boot) to see what the node offers, then approve or deny it.", elem_classes="ob-note")
    who = gr.HTML(owner.note(None, settings), elem_id="pair-owner", js_on_load=None)
    with gr.Row(equal_height=True):
        code = gr.Textbox(label="Pairing code", placeholder="BCDF-GHJK", elem_id="pair-code", max_length=40,
                          scale=1, min_width=160)
        token = gr.Textbox(label="Admin token", type="password", elem_id="pair-token", max_length=400,
                           scale=2, min_width=200)
    with gr.Row():
        lookup = gr.Button("Look up", elem_id="pair-lookup", min_width=90)
        approve = gr.Button("Approve", variant="primary", elem_id="pair-approve", min_width=90)
        deny = gr.Button("Deny", variant="stop", elem_id="pair-deny", min_width=90)
    result = gr.HTML("", elem_id="pair-result", js_on_load=None)
    gr.Markdown("### Paired nodes")
    nodes = gr.Dataframe(headers=NODE_HEADERS, value=[], elem_id="pair-nodes", interactive=False, wrap=True,
                         elem_classes="ob-table",
                         column_count=len(NODE_HEADERS), max_height=360)
    with gr.Row(elem_classes="ob-bottom"):
        which = gr.Dropdown(label="Node to revoke", choices=[], elem_id="pair-node", scale=3, min_width=200)
        revoke = gr.Button("Revoke", variant="stop", elem_id="pair-revoke", scale=0, min_width=100)
        refresh = gr.Button("Refresh", elem_id="pair-refresh", scale=0, min_width=100)
    revoke_msg = gr.HTML("", elem_id="pair-revoke-result", js_on_load=None)
    timer = gr.Timer(REFRESH_S, active=False)

    def listing(current: str | None = None):
        try:
            paired = pairing.nodes()
        except Exception:  # noqa: BLE001
            log.exception("listing paired nodes failed")
            return gr.skip(), gr.skip()
        choices = node_choices(paired)
        ids = [value for _, value in choices]
        return (gr.Dataframe(value=node_rows(paired), headers=NODE_HEADERS),
                gr.Dropdown(choices=choices, value=current if current in ids else None))

    def run(action: str, user_code: str, admin: str, client: str):
        user_code, admin = (user_code or "").strip(), (admin or "").strip()
        if not user_code:
            return msg("err", "Enter the code the node shows (8 letters, like BCDF-GHJK).")
        try:
            if action == "lookup":
                pairing.check_admin(admin, client)
                return offer_card(pairing.lookup(user_code))
            if action == "approve":
                done = pairing.approve(user_code, admin, client)
                return msg("ok", f"Approved {done['name']} ({done['node_id']}). It connects within a few "
                                 "seconds and then shows in Status and below.")
            done = pairing.deny(user_code, admin, client)
            return msg("ok", f"Denied {done['name']} (code {done['user_code']}).")
        except GatewayError as exc:
            return msg("err", exc.message)
        except Exception as exc:  # noqa: BLE001 — a readable line, never a trace
            log.exception("pairing action %s failed", action)
            return msg("err", f"Something went wrong ({type(exc).__name__}); the gateway log has the details.")

    def do_revoke(node_id: str | None, admin: str, request: gr.Request):
        if not node_id:
            return msg("err", "Pick the node to revoke.")
        try:
            done = pairing.revoke(node_id, (admin or "").strip(), caller(request, settings.forwarded_hops))
        except GatewayError as exc:
            return msg("err", exc.message)
        except Exception as exc:  # noqa: BLE001
            log.exception("revoke failed")
            return msg("err", f"Something went wrong ({type(exc).__name__}); the gateway log has the details.")
        return msg("ok", f"Revoked {done['name']} ({done['node_id']}): its token no longer works and it was "
                         "disconnected.")

    # Who may act comes from Gradio's signed session (gr.OAuthProfile), never from the page's inputs.
    def as_owner(action: str):
        def handler(user_code: str, admin: str, profile: gr.OAuthProfile | None, request: gr.Request):
            return run(action, user_code, owner.admin_token(pairing, settings, profile, admin),
                       caller(request, settings.forwarded_hops))
        return handler

    def revoke_as_owner(node_id: str | None, admin: str, profile: gr.OAuthProfile | None, request: gr.Request):
        return do_revoke(node_id, owner.admin_token(pairing, settings, profile, admin), request)

    def whoami(profile: gr.OAuthProfile | None):
        hide = owner.owner_as(profile, settings) is not None  # a signed-in owner needs no admin token
        return owner.note(profile, settings), gr.Textbox(visible=False) if hide else gr.skip()

    kwargs: dict[str, Any] = dict(api_visibility="private", concurrency_limit=None)
    for button, action in ((lookup, "lookup"), (approve, "approve"), (deny, "deny")):
        button.click(as_owner(action), [code, token], result, **kwargs).then(
            listing, which, [nodes, which], show_progress="hidden", **kwargs)
    code.submit(as_owner("lookup"), [code, token], result, **kwargs)
    blocks.load(whoami, None, [who, token], queue=False, api_visibility="private")
    revoke.click(revoke_as_owner, [which, token], revoke_msg, **kwargs).then(
        listing, which, [nodes, which], show_progress="hidden", **kwargs)
    refresh.click(listing, which, [nodes, which], **kwargs)
    timer.tick(listing, which, [nodes, which], show_progress="hidden", **kwargs)
    blocks.load(listing, which, [nodes, which], show_progress="hidden", **kwargs)
    return code, timer
