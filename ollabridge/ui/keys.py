"""The Keys tab: the owner mints API keys (name, requests a minute, requests in flight), lists and
revokes them.

It calls `gateway.keys` (ollabridge.edge.keys.ApiKeys) after the same admin check as `/admin/keys`
(`pairing.check_admin`), with the same validation (the route's `MintRequest`). A new key is shown
once, right after minting; only its SHA-256 is kept. On a Space, an owner signed in with Hugging
Face needs no admin token (ollabridge/ui/owner.py).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from pydantic import ValidationError

from ollabridge.api.admin_routes import MintRequest
from ollabridge.api.errors import describe_validation
from ollabridge.config import Settings
from ollabridge.errors import GatewayError
from ollabridge.gateway import Gateway
from ollabridge.ui import owner, pair

log = logging.getLogger("ollabridge.ui")

KEY_HEADERS = ["ID", "Name", "Source", "Starts with", "Created", "Requests a minute", "In flight at once"]


def msg(kind: str, text: str) -> str:
    return pair.msg(kind, text, tab="keys")


def key_rows(keys: list[dict[str, Any]], settings: Settings) -> list[list[Any]]:
    def limit(value: Any, default: int) -> str:
        if value is None:
            return f"default ({default or 'no limit'})"
        return str(value) if value else "no limit"

    return [[k.get("id"), k.get("name"), "OLLABRIDGE_API_KEYS" if k.get("source") == "env" else "minted",
             f"{k['prefix']}…" if k.get("prefix") else "—", (k.get("created") or "—").replace("T", " ")[:19],
             limit(k.get("rpm"), settings.key_rate_limit_rpm), limit(k.get("streams"), settings.key_rate_limit_streams)]
            for k in keys]


def key_choices(keys: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Keys that can be revoked here (minted ones; those from OLLABRIDGE_API_KEYS live in the environment)."""
    return [(f"{k.get('name')} · {k.get('id')}", k.get("id")) for k in keys if k.get("source") == "minted"]


def state_line(enabled: bool, count: int) -> str:
    if enabled:
        return msg("info", f"The API needs a key: {count} {'key works' if count == 1 else 'keys work'} now.")
    return msg("info", "The API is open (no key is configured or minted): mint one to require keys.")


def build(blocks: gr.Blocks, gateway: Gateway, settings: Settings) -> None:
    keys, pairing = gateway.keys, gateway.pairing
    gr.Markdown("API keys for `/v1`, `/ollama/v1`, `/ollama/api` and this page's Chat tab. Once any key exists "
                "every call needs one. A key may carry its own limits; empty fields use the gateway's "
                "(`OLLABRIDGE_KEY_RATE_LIMIT_RPM`, `OLLABRIDGE_KEY_RATE_LIMIT_STREAMS`).", elem_classes="ob-note")
    who = gr.HTML(owner.note(None, settings), elem_id="keys-owner", js_on_load=None)
    token = gr.Textbox(label="Admin token", type="password", elem_id="keys-token", max_length=400)
    with gr.Row(equal_height=True, elem_classes="ob-bottom"):
        name = gr.Textbox(label="Name (who it is for)", placeholder="my-app", elem_id="keys-name", max_length=64,
                          scale=3, min_width=180)
        # Text, not gr.Number: an empty field must mean "the gateway's default", never 0 ("no limit").
        rpm = gr.Textbox(label="Requests a minute (0: no limit)", elem_id="keys-rpm", max_length=8, scale=2,
                         min_width=140, placeholder=f"default: {settings.key_rate_limit_rpm}")
        streams = gr.Textbox(label="In flight at once (0: no limit)", elem_id="keys-streams", max_length=8, scale=2,
                             min_width=140, placeholder=f"default: {settings.key_rate_limit_streams}")
        mint = gr.Button("Mint key", variant="primary", elem_id="keys-mint", scale=0, min_width=110)
    new_key = gr.Textbox(label="The new key: copy it now, it is shown only this once", elem_id="keys-new",
                         interactive=False, visible=False, buttons=["copy"])
    result = gr.HTML("", elem_id="keys-result", js_on_load=None)
    gr.Markdown("### Keys")
    state = gr.HTML("", elem_id="keys-state", js_on_load=None)
    table = gr.Dataframe(headers=KEY_HEADERS, value=[], elem_id="keys-list", interactive=False, wrap=True,
                         elem_classes="ob-table", column_count=len(KEY_HEADERS), max_height=360)
    with gr.Row(elem_classes="ob-bottom"):
        which = gr.Dropdown(label="Key to revoke", choices=[], elem_id="keys-key", scale=3, min_width=200)
        revoke = gr.Button("Revoke", variant="stop", elem_id="keys-revoke", scale=0, min_width=100)
        refresh = gr.Button("Show keys", elem_id="keys-refresh", scale=0, min_width=110)
    revoke_msg = gr.HTML("", elem_id="keys-revoke-result", js_on_load=None)

    def allowed(admin: str, profile: Any, request: gr.Request | None) -> None:
        """Raise AdminRequired unless a signed-in owner or the admin token: `/admin/keys`' own check (a
        wrong token counts against the visitor's address, as on the API)."""
        pairing.check_admin(owner.admin_token(pairing, settings, profile, admin),
                            pair.caller(request, settings.forwarded_hops))

    def listing(admin: str, profile: Any, quiet: bool, request: gr.Request | None = None):
        """(state line, table, revoke choices); `quiet`: leave them as they are when not allowed."""
        try:
            allowed(admin, profile, request)
            live = keys.list()
        except GatewayError as exc:
            if quiet:
                return gr.skip(), gr.skip(), gr.skip()
            return msg("err", exc.message), gr.Dataframe(value=[], headers=KEY_HEADERS), gr.Dropdown(choices=[])
        except Exception:  # noqa: BLE001
            log.exception("listing API keys failed")
            return msg("err", "Listing the keys failed; the gateway log has the details."), gr.skip(), gr.skip()
        return (state_line(keys.enabled, len(live)), gr.Dataframe(value=key_rows(live, settings), headers=KEY_HEADERS),
                gr.Dropdown(choices=key_choices(live), value=None))

    def show(admin: str, profile: gr.OAuthProfile | None, request: gr.Request):
        return listing(admin, profile, quiet=False, request=request)

    def relist(admin: str, profile: gr.OAuthProfile | None, request: gr.Request):
        return listing(admin, profile, quiet=True, request=request)

    def on_load(profile: gr.OAuthProfile | None):
        # A signed-in owner sees the keys at once (and no admin token field); anyone else after
        # entering the admin token.
        if owner.owner_as(profile, settings) is None:
            return owner.note(profile, settings), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return owner.note(profile, settings), gr.Textbox(visible=False), *listing("", profile, quiet=True)

    def do_mint(admin: str, key_name: str, key_rpm: str, key_streams: str, profile: gr.OAuthProfile | None,
                request: gr.Request):
        hidden = gr.Textbox(value="", visible=False)
        try:
            allowed(admin, profile, request)
            fields: dict[str, Any] = {"rpm": (key_rpm or "").strip() or None,
                                      "streams": (key_streams or "").strip() or None}
            if (key_name or "").strip():
                fields["name"] = key_name.strip()
            body = MintRequest(**fields)
            made = keys.mint(body.name, body.rpm, body.streams)
        except ValidationError as exc:
            return hidden, msg("err", describe_validation(list(exc.errors()))[0])
        except GatewayError as exc:
            return hidden, msg("err", exc.message)
        except Exception as exc:  # noqa: BLE001 — a readable line, never a trace
            log.exception("minting an API key failed")
            return hidden, msg("err", f"Something went wrong ({type(exc).__name__}); the gateway log has the details.")
        return (gr.Textbox(value=made["key"], visible=True),
                msg("ok", f"Minted {made['name']} ({made['id']}). Copy the key now: it is not stored and is never "
                          "shown again. It works at once."))

    def do_revoke(key_id: str | None, admin: str, profile: gr.OAuthProfile | None, request: gr.Request):
        if not key_id:
            return msg("err", "Pick the key to revoke.")
        try:
            allowed(admin, profile, request)
            done = keys.revoke(key_id)
        except GatewayError as exc:
            return msg("err", exc.message)
        except Exception as exc:  # noqa: BLE001
            log.exception("revoking an API key failed")
            return msg("err", f"Something went wrong ({type(exc).__name__}); the gateway log has the details.")
        left = " No key is left: the API is open again." if done.get("api_open") else ""
        return msg("ok", f"Revoked {done['name']} ({done['id']}): it stops working at once.{left}")

    kwargs: dict[str, Any] = dict(api_visibility="private", concurrency_limit=None)
    listed = [state, table, which]
    mint.click(do_mint, [token, name, rpm, streams], [new_key, result], **kwargs).then(
        relist, token, listed, show_progress="hidden", **kwargs)
    revoke.click(do_revoke, [which, token], revoke_msg, **kwargs).then(
        relist, token, listed, show_progress="hidden", **kwargs)
    refresh.click(show, token, listed, **kwargs)
    blocks.load(on_load, None, [who, token, *listed], queue=False, api_visibility="private")
