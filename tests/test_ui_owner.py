"""A public Space that only its owner controls: "Sign in with Hugging Face" for the owner, the Pair
and Keys tabs without the admin token for owners only, and API keys minted, listed and revoked in
the Keys tab.

The gateway (`python app.py`, UI on) runs as on a Space with `hf_oauth: true`: SYSTEM=spaces,
SPACE_ID, SPACE_AUTHOR_NAME and the OAUTH_* variables Hugging Face sets, with OPENID_PROVIDER_URL
pointing at the stand-in Hub (tests/standin_hub.py), which plays the Hub's OpenID provider. Gradio's
own OAuth routes (authlib) do the real code flow against it in Debian's Chromium, one browser
context (cookie jar) per person. A scripted Ollama answers the chats.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import gateway_env
from tests.procs import free_port, running
from tests.standin_hub import StandinHub
from tests.test_ui_access import MODEL, stats
from tests.ui_helpers import (CHROMIUM, DESKTOP, Watch, browser, fake_ollama, final_reply, open_tab,  # noqa: F401
                              send, set_number, shoot, wait_until)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed "
                                "(apt-get install chromium)")

ADMIN = "test-admin-token"
CLIENT_ID, CLIENT_SECRET = "standin-client-id", "standin-client-secret"
AUTHOR = "alice"  # the Space's author
ORG = "bridge-team"  # in OLLABRIDGE_OWNERS: its admins and writers are owners too


@pytest.fixture(scope="module")
def hub():
    with StandinHub(oauth_clients={CLIENT_ID: CLIENT_SECRET},
                    orgs={"bob": {ORG: "write"}, "dave": {ORG: "read"}}) as h:
        yield h


@pytest.fixture(scope="module")
def upstream(out_dir: Path):
    with fake_ollama(out_dir, "ui-owner-ollama", MODEL, chunks=8, delay=0.01) as url:
        yield url


@pytest.fixture(scope="module")
def space(hub: StandinHub, upstream: str, out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    env = gateway_env(tmp_path_factory.mktemp("ui-owner"), port, OLLAMA_BASE_URL=upstream, OLLABRIDGE_UI="1",
                      OLLABRIDGE_DEFAULT_MODEL=MODEL, OLLABRIDGE_OWNERS=f"carol, {ORG}",
                      SYSTEM="spaces", SPACE_ID=f"{AUTHOR}/bridge", SPACE_AUTHOR_NAME=AUTHOR,
                      OAUTH_CLIENT_ID=CLIENT_ID, OAUTH_CLIENT_SECRET=CLIENT_SECRET, OAUTH_SCOPES="openid profile",
                      OPENID_PROVIDER_URL=hub.url)
    with running(["app.py"], f"http://127.0.0.1:{port}/health", env=env, log=out_dir / "ui-owner-gateway.log"):
        yield f"http://127.0.0.1:{port}"


def visit(browser, url: str, user: str | None, hub: StandinHub, path: str = "/"):
    """A page in a browser context of its own; signed in with Hugging Face as `user` (None: not)."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url + path)
    page.locator("#ob-login").wait_for()
    if user is not None:
        hub.signing_in = user
        page.click("#ob-login")  # Gradio: /login/huggingface -> the Hub's consent -> /login/callback -> /
        page.locator("#ob-login", has_text=f"Logout ({user})").wait_for()
    # Watched from here: leaving the first page for the sign-in aborts its open requests, as it should.
    watch = Watch().attach(page)
    page.wait_for_function("() => { const i = document.querySelector('#chat-model input'); return i && i.value; }")
    return page, watch


# Gradio's frontend on any Space (SYSTEM=spaces) asks huggingface.co about the Space and loads two
# Google Fonts, whatever the app; without a network here those fail. Every other problem counts.
SPACE_FRONTEND = ("https://huggingface.co/api/spaces/", "https://fonts.googleapis.com/")
SPACE_FRONTEND_ERRORS = ("console error: Failed to load resource: net::ERR_NAME_NOT_RESOLVED",
                         "console error: Space not found")


def problems(watch: Watch) -> str:
    return "\n".join(p for p in watch.problems() if p not in SPACE_FRONTEND_ERRORS
                     and not p.removeprefix("request outside loopback: ").startswith(SPACE_FRONTEND))


def owner_note(page, tab: str) -> str:
    return page.locator(f"#{tab}-owner").inner_text()


def device_code(url: str) -> tuple[str, str]:
    """A node's (user code, device code), as `python -m ollabridge node` would get them."""
    started = httpx.post(url + "/device/start", json={"name": "owner-test-gpu", "models": ["m:1b"]})
    assert started.status_code == 200, started.text
    return started.json()["user_code"], started.json()["device_code"]


def poll(url: str, device: str) -> str:
    """What the device's next poll says: its RFC 8628 error, or "approved"."""
    answer = httpx.post(url + "/device/token", json={"device_code": device})
    return "approved" if answer.status_code == 200 else answer.json()["error"]


def test_who_is_an_owner():
    """The author and OLLABRIDGE_OWNERS, on a Space with OAuth only (off one, Gradio's stand-in login
    would sign anyone in as the machine's own Hugging Face account)."""
    from ollabridge.config import Settings
    from ollabridge.ui import owner

    settings = Settings(OLLABRIDGE_OWNERS="carol")
    alice = {"preferred_username": "alice"}
    on_space = {"SYSTEM": "spaces", "SPACE_ID": "alice/bridge", "OAUTH_CLIENT_ID": "x"}
    assert owner.owner_as(alice, settings, on_space) == "alice"  # the author, from SPACE_ID's namespace
    assert owner.owner_as(alice, settings, {**on_space, "OAUTH_CLIENT_ID": ""}) is None  # no hf_oauth
    assert owner.owner_as(alice, settings, {"SPACE_ID": "alice/bridge", "OAUTH_CLIENT_ID": "x"}) is None
    assert owner.owner_as({"preferred_username": "Carol"}, settings, on_space) == "carol"
    assert owner.owner_as({"preferred_username": "eve"}, settings, on_space) is None
    assert owner.owner_as(None, settings, on_space) is None


def test_a_stranger_signed_in_gets_no_owner_powers(browser, space: str, hub: StandinHub):
    page, watch = visit(browser, space, "mallory", hub)
    open_tab(page, "Pair a device")
    assert "not an owner" in owner_note(page, "pair")
    code, device = device_code(space)
    page.fill("#pair-code textarea", code)
    page.click("#pair-approve")
    page.wait_for_selector("#pair-msg-err")
    assert "admin token is required" in page.inner_text("#pair-result")

    open_tab(page, "Keys")
    assert "not an owner" in owner_note(page, "keys")
    page.fill("#keys-name textarea", "mallory-app")
    page.click("#keys-mint")
    page.wait_for_selector("#keys-msg-err")
    assert "admin token is required" in page.inner_text("#keys-result")
    assert page.locator("#keys-new").is_hidden()
    page.click("#keys-refresh")
    wait_until(lambda: "admin token is required" in page.inner_text("#keys-state"), 10, 0.1, "the list refused")
    # A member of an owner org with only read access is no owner either.
    dave, _ = visit(browser, space, "dave", hub)
    open_tab(dave, "Keys")
    assert "not an owner" in owner_note(dave, "keys")
    # Nothing was minted or approved.
    keys = httpx.get(space + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert keys == {"api_open": True, "keys": []}
    assert poll(space, device) == "authorization_pending"
    assert not problems(watch), problems(watch)


def test_the_owner_signs_in_pairs_and_mints_a_key_shown_once(browser, space: str, hub: StandinHub,
                                                              upstream: str, out_dir: Path):
    # A node's "approve it at" link: the owner signs in on the way and lands on the Pair tab with the
    # code filled in, and approves without any admin token.
    code, device = device_code(space)
    page, watch = visit(browser, space, AUTHOR, hub, path=f"/?user_code={code}")
    wait_until(lambda: page.locator("#pair-code textarea").count()
               and page.input_value("#pair-code textarea") == code, 30, 0.1, "the code from the link")
    assert "an owner of this Space" in owner_note(page, "pair")
    assert page.locator("#pair-token").count() == 0 or page.locator("#pair-token").is_hidden()
    page.click("#pair-approve")
    wait_until(lambda: "Approved owner-test-gpu" in page.inner_text("#pair-result"), 10, 0.1, "approval")
    assert poll(space, device) == "approved"

    # Keys: mint one with its own limits; the secret is shown once, the list never has it.
    open_tab(page, "Keys")
    assert "an owner of this Space" in owner_note(page, "keys")
    wait_until(lambda: "The API is open" in page.inner_text("#keys-state"), 10, 0.1, "the keys' state")
    page.fill("#keys-name textarea", "my-app")
    page.fill("#keys-rpm textarea", "1")
    page.fill("#keys-streams textarea", "1")
    page.click("#keys-mint")
    page.locator("#keys-new textarea, #keys-new input").first.wait_for()
    secret = page.locator("#keys-new textarea, #keys-new input").first.input_value()
    assert secret.startswith("obk_"), secret
    assert "shown again" in page.inner_text("#keys-result")
    wait_until(lambda: "my-app" in page.inner_text("#keys-list"), 10, 0.1, "the new key in the list")
    shoot(page, out_dir / "screenshots", "keys-owner-minted-desktop")
    listed = page.inner_text("#keys-list")
    assert secret not in listed and secret[:8] in listed and "minted" in listed, listed
    assert "The API needs a key" in page.inner_text("#keys-state")

    # The API now needs a key.
    assert httpx.get(space + "/ollama/v1/models").status_code == 401

    # The chat tab asks for a key (the page loaded before the key existed: a new page says so), then
    # chats under this key's own limits: 1 request a minute.
    chat, _ = visit(browser, space, None, hub)
    assert "needs an API key" in chat.inner_text("#chat-key-note")
    set_number(chat, "chat-max-tokens", 16)
    chats = stats(upstream)["chats"]
    send(chat, "no key")
    assert "API key needed" in final_reply(chat, 1)
    chat.fill("#chat-key input", secret)
    send(chat, "with my key")
    assert "tok15" in final_reply(chat, 2)
    assert stats(upstream)["chats"] == chats + 1
    send(chat, "once more")
    refused = final_reply(chat, 3)
    assert "Too many requests" in refused and "1 requests a minute for this key" in refused, refused
    assert stats(upstream)["chats"] == chats + 1
    # The API counts the same budget: the key has spent its minute.
    assert httpx.get(space + "/ollama/api/tags", headers={"Authorization": f"Bearer {secret}"}).status_code == 429

    # On a new page the Keys tab shows the key's prefix only: the secret is gone for good.
    again, _ = visit(browser, space, AUTHOR, hub)
    open_tab(again, "Keys")
    wait_until(lambda: "my-app" in again.inner_text("#keys-list"), 10, 0.1, "the list on a new page")
    assert secret not in again.content()

    # Revoke it: with no key left the API is open again.
    page.locator("#keys-key input").click()
    page.locator("[role=listbox] [role=option]", has_text="my-app").first.click()
    page.keyboard.press("Escape")
    page.click("#keys-revoke")
    wait_until(lambda: "Revoked my-app" in page.inner_text("#keys-revoke-result"), 10, 0.1, "revocation")
    assert "open again" in page.inner_text("#keys-revoke-result")
    wait_until(lambda: "my-app" not in page.inner_text("#keys-list"), 10, 0.1, "the key to leave the list")
    assert httpx.get(space + "/ollama/v1/models").status_code == 200
    assert httpx.get(space + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}).json()["keys"] == []
    assert not problems(watch), problems(watch)


def test_an_org_writer_named_in_owners_is_an_owner_and_the_admin_token_still_works(browser, space: str,
                                                                                    hub: StandinHub):
    bob, _ = visit(browser, space, "bob", hub)  # writes to bridge-team, which OLLABRIDGE_OWNERS names
    open_tab(bob, "Keys")
    assert "an owner of this Space" in owner_note(bob, "keys")
    bob.click("#keys-refresh")
    wait_until(lambda: "The API is open" in bob.inner_text("#keys-state"), 10, 0.1, "the keys for bob")

    # Not signed in: the admin token, as before.
    page, _ = visit(browser, space, None, hub)
    open_tab(page, "Keys")
    assert "sign in with Hugging Face" in owner_note(page, "keys")
    page.fill("#keys-token input", ADMIN)
    page.fill("#keys-name textarea", "by-token")
    page.fill("#keys-rpm textarea", "lots")
    page.click("#keys-mint")
    wait_until(lambda: "Invalid request at 'rpm'" in page.inner_text("#keys-result"), 10, 0.1, "the rpm refused")
    page.fill("#keys-rpm textarea", "")
    page.click("#keys-mint")
    wait_until(lambda: "Minted by-token" in page.inner_text("#keys-result"), 10, 0.1, "a key minted by token")
    made = page.locator("#keys-new textarea, #keys-new input").first.input_value()
    listed = httpx.get(space + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}).json()["keys"]
    assert [k["name"] for k in listed] == ["by-token"] and made.startswith(listed[0]["prefix"])
    httpx.delete(space + f"/admin/keys/{listed[0]['id']}", headers={"Authorization": f"Bearer {ADMIN}"})
