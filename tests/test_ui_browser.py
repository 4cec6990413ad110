"""The web UI end to end, in real headless Chromium (Debian's `chromium`, driven by playwright).

One gateway process (`python app.py`, UI on) in front of the real in-box engine, plus a scripted Ollama
as an extra upstream (a second model to switch to) and another one behind a real node agent
(`python -m ollabridge node`) that pairs by code through the Pair tab. Screenshots of every tab, on a
desktop and a phone-width screen, land in test-output/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import gateway_env
from tests.procs import free_port, running
from tests.ui_helpers import (CHROMIUM, DESKTOP, PHONE, Watch, bot_messages, browser, fake_ollama,  # noqa: F401
                              final_reply, no_horizontal_overflow, open_tab, pick, send, set_number, shoot,
                              wait_until)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed "
                                "(apt-get install chromium)")

ADMIN = "test-admin-token"
UPSTREAM_MODEL = "fake-b:latest"
NODE_MODEL = "gpu-llama:8b"
NODE_NAME = "ui-test-gpu"
INBOX_MODEL = "gemma3:270m"


@pytest.fixture(scope="module")
def shots(out_dir: Path) -> Path:
    folder = out_dir / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def upstream(out_dir: Path):
    with fake_ollama(out_dir, "ui-upstream", UPSTREAM_MODEL, chunks=12, delay=0.05) as url:
        yield url


@pytest.fixture(scope="module")
def node_ollama(out_dir: Path):
    with fake_ollama(out_dir, "ui-node-ollama", NODE_MODEL, chunks=6, delay=0.02) as url:
        yield url


@pytest.fixture(scope="module")
def ui_url(engine_url: str, upstream: str, out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    env = gateway_env(tmp_path_factory.mktemp("ui-gateway"), port, OLLAMA_BASE_URL=engine_url, OLLABRIDGE_UI="1",
                      OLLABRIDGE_UPSTREAMS=upstream, OLLABRIDGE_DEVICE_INTERVAL="1",
                      OLLABRIDGE_RELAY_HEARTBEAT="2", OLLABRIDGE_HISTORY_PERIOD="1")
    with running(["app.py"], f"http://127.0.0.1:{port}/health", env=env, log=out_dir / "ui-gateway.log"):
        yield f"http://127.0.0.1:{port}"


def _open(browser, url: str, viewport: dict) -> tuple:
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(30_000)
    watch = Watch().attach(page)
    started = time.monotonic()
    page.goto(url + "/")
    # Ready: the model picker is filled from the live model list.
    page.wait_for_function("() => { const i = document.querySelector('#chat-model input'); return i && i.value; }")
    return page, watch, time.monotonic() - started


def test_gradio_is_imported_only_when_the_ui_is_on():
    import subprocess
    import sys

    code = ("import sys; from ollabridge.config import Settings; from ollabridge.server import create_app; "
            "create_app(Settings(OLLABRIDGE_UI=False)); print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False", out.stderr


def test_api_and_ui_share_one_port(ui_url: str):
    """The UI at / does not hide the API: /docs, /health, the OpenAI API and its error format."""
    assert "gradio" in httpx.get(ui_url + "/").text
    assert httpx.get(ui_url + "/docs").status_code == 200
    assert httpx.get(ui_url + "/health").json()["status"] in ("ok", "degraded")
    names = [m["id"] for m in httpx.get(ui_url + "/ollama/v1/models").json()["data"]]
    assert INBOX_MODEL in names and UPSTREAM_MODEL in names
    missing = httpx.get(ui_url + "/ollama/v1/no-such-route")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Not Found"
    assert httpx.post(ui_url + "/ollama/v1/models").status_code == 405
    assert httpx.get(ui_url + "/device/nodes", headers={"Authorization": f"Bearer {ADMIN}"}).json() == {"nodes": []}
    # Off a Space there is no "Sign in with Hugging Face": Gradio's local stand-in for it would sign
    # every visitor in as this machine's own Hugging Face account (ollabridge/ui/owner.py).
    assert httpx.get(ui_url + "/login/huggingface", follow_redirects=False).status_code == 404


def test_chat_streams_from_inbox_engine_and_switches_model(browser, ui_url: str, upstream: str, shots: Path):
    page, watch, load_s = _open(browser, ui_url, DESKTOP)
    print(f"\nUI page load (to model list filled): {load_s:.2f}s")
    pick(page, "chat-model", INBOX_MODEL)
    set_number(page, "chat-max-tokens", 48)
    set_number(page, "chat-temp", 0)

    sent = time.monotonic()
    send(page, "Say hello in five words.")
    seen: list[str] = []
    first_token = None

    def finished():
        msgs = bot_messages(page)
        text = msgs[0] if msgs else ""
        nonlocal first_token
        if text.strip() and first_token is None:
            first_token = time.monotonic() - sent
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        return "tok/s" in text or "⚠️" in text

    wait_until(finished, 180, 0.03, "the in-box engine's reply")
    final = seen[-1]
    print(f"UI chat first token: {first_token:.2f}s; {len(seen)} distinct states of the reply")
    assert "⚠️" not in final, final
    assert "⚡ ollama" in final and "tok/s" in final, final
    assert len(seen) >= 3, f"the reply did not stream: {seen}"
    reply_text = final.split("⚡")[0].strip()
    assert reply_text, final
    shoot(page, shots, "chat-reply-desktop")

    # Switch to the second model (a scripted Ollama upstream): the reply comes from it, through the router.
    pick(page, "chat-model", "fake-b")
    send(page, "And now you?")
    final = final_reply(page, 2, 60)
    assert "tok0" in final and "tok11" in final and "upstream-1" in final, final

    # Stop ends a long reply at once, and the backend's stream is cancelled (no orphan generation).
    set_number(page, "chat-max-tokens", 4096)  # the scripted upstream streams one chunk per token asked
    before = httpx.get(upstream + "/_stats").json()["cancelled"]
    send(page, "Talk for a long time.")
    wait_until(lambda: len(bot_messages(page)) >= 3 and "tok3" in bot_messages(page)[2], 30, 0.05, "a long reply")
    page.click("#chat-stop")
    wait_until(lambda: httpx.get(upstream + "/_stats").json()["cancelled"] > before, 15, 0.1,
               "the upstream stream to be cancelled")
    stopped = bot_messages(page)[2]
    time.sleep(0.5)
    assert bot_messages(page)[2] == stopped and "tok4000" not in stopped
    set_number(page, "chat-max-tokens", 48)

    # A backend error reads as a message in the chat, not a trace: the model vanishes upstream.
    httpx.post(upstream + "/_control", json={"models": []})
    try:
        send(page, "Still there?")
        final = final_reply(page, 4, 60)
    finally:
        httpx.post(upstream + "/_control", json={"models": [UPSTREAM_MODEL]})
    # (Within the model-list cache the request still reaches the upstream, which answers 404: a backend
    # error; after it, the router's own "model not available". Either way one readable line.)
    assert final.startswith("⚠️") and "fake-b" in final and ("failed" in final or "not available" in final), final
    assert "Traceback" not in final and "File \"" not in final

    # Clear empties the conversation.
    page.click("#chat-clear")
    wait_until(lambda: not bot_messages(page), 10, 0.1, "the chat to clear")
    assert not watch.problems(), watch.problems()


def test_api_tab_uses_own_url(browser, ui_url: str, shots: Path):
    page, watch, _ = _open(browser, ui_url, DESKTOP)
    open_tab(page, "API")
    page.wait_for_selector("#api-curl")
    wait_until(lambda: ui_url in page.inner_text("#api-curl"), 10, 0.1, "snippets with the page's URL")
    assert f"curl -X POST {ui_url}/ollama/v1/chat/completions" in page.inner_text("#api-curl")
    avatar = page.inner_text("#api-avatar")
    assert "Custom / OpenAI-compatible" in avatar and f"{ui_url}/ollama/v1" in avatar and "(leave empty)" in avatar
    assert page.locator("#api-intro a[href$='/docs']").count() == 1
    page.get_by_role("tab", name="Python").click()
    wait_until(lambda: page.locator("#api-python").count() and f'base_url="{ui_url}/ollama/v1"'
               in page.inner_text("#api-python"), 10, 0.1, "the Python snippet")
    page.get_by_role("tab", name="JavaScript").click()
    wait_until(lambda: page.locator("#api-js").count() and f"{ui_url}/ollama/v1/chat/completions"
               in page.inner_text("#api-js"), 10, 0.1, "the JavaScript snippet")
    page.get_by_role("tab", name="curl").click()
    shoot(page, shots, "api-snippets-desktop")
    assert not watch.problems(), watch.problems()


def _node_code(log: Path, timeout: float = 60) -> str:
    def code():
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.findall(r"Code: ([A-Z]{4}-[A-Z]{4})", text)
        return found[-1] if found else None
    return wait_until(code, timeout, 0.2, "the node agent's pairing code")


def _nodes_table(page, elem_id: str) -> str:
    return page.inner_text(f"#{elem_id}")


def test_pair_a_node_see_it_in_status_then_revoke(browser, ui_url: str, node_ollama: str, out_dir: Path,
                                                   shots: Path, tmp_path: Path):
    page, watch, _ = _open(browser, ui_url, DESKTOP)
    log = out_dir / "ui-node-agent.log"
    log.unlink(missing_ok=True)
    agent = ["-m", "ollabridge", "node", "--cloud", ui_url, "--ollama", node_ollama, "--name", NODE_NAME,
             "--slots", "2", "--credentials", str(tmp_path / "node.json")]
    with running(agent, f"{ui_url}/health", log=log, timeout=30):
        code = _node_code(log)
        # The node's "Approve it at" link opens the Pair tab with the code filled in.
        page.goto(f"{ui_url}/?user_code={code}")
        wait_until(lambda: page.locator("#pair-code textarea").count()
                   and page.input_value("#pair-code textarea") == code, 30, 0.1, "the code from the link")

        # Wrong admin token, malformed code: readable messages.
        page.fill("#pair-code textarea", code)
        page.fill("#pair-token input", "not-the-token")
        page.click("#pair-approve")
        page.wait_for_selector("#pair-msg-err")
        assert "admin token is wrong" in page.inner_text("#pair-result")
        page.fill("#pair-code textarea", "HELLO")
        page.fill("#pair-token input", ADMIN)
        page.click("#pair-lookup")
        wait_until(lambda: "not a pairing code" in page.inner_text("#pair-result"), 10, 0.1, "bad-code message")

        # Look up: the node's name and what it offers; then approve.
        page.fill("#pair-code textarea", code.lower().replace("-", ""))
        page.click("#pair-lookup")
        page.wait_for_selector("#pair-offer")
        offer = page.inner_text("#pair-offer")
        assert NODE_NAME in offer and code in offer
        shoot(page, shots, "pair-offer-desktop")
        page.click("#pair-approve")
        wait_until(lambda: "Approved" in page.inner_text("#pair-result"), 10, 0.1, "approval")
        page.click("#pair-approve")
        wait_until(lambda: "already" in page.inner_text("#pair-result"), 10, 0.1, "already-used message")

        # The node connects and shows in Status (refreshed by its timer), with its GPU model.
        open_tab(page, "Status")
        wait_until(lambda: NODE_NAME in _nodes_table(page, "status-nodes")
                   and "online" in _nodes_table(page, "status-nodes"), 40, 0.25, "the node in Status")
        assert NODE_MODEL in _nodes_table(page, "status-nodes")
        shoot(page, shots, "status-node-desktop")

        # Its model is in the chat's picker, marked GPU, and answers through the relay.
        open_tab(page, "Chat")
        page.click("#chat-models-refresh")
        wait_until(lambda: page.evaluate("() => document.querySelector('#chat-model input').value"), 10, 0.1,
                   "the model list")
        pick(page, "chat-model", "GPU")
        send(page, "Hello GPU")
        final = final_reply(page, 1, 60)
        assert "tok0" in final and NODE_NAME in final and "GPU node" in final, final

        # Revoke it from the Pair tab: it leaves Status.
        open_tab(page, "Pair a device")
        wait_until(lambda: NODE_NAME in _nodes_table(page, "pair-nodes"), 15, 0.25, "the node in the Pair list")
        pick(page, "pair-node", NODE_NAME)
        page.click("#pair-revoke")
        wait_until(lambda: "Revoked" in page.inner_text("#pair-revoke-result"), 10, 0.1, "revocation")
        open_tab(page, "Status")
        wait_until(lambda: NODE_NAME not in _nodes_table(page, "status-nodes"), 20, 0.25, "the node to leave")
        nodes = httpx.get(ui_url + "/device/nodes", headers={"Authorization": f"Bearer {ADMIN}"}).json()["nodes"]
        assert nodes == []
        health = httpx.get(ui_url + "/health").json()
        assert health["relay"]["nodes_connected"] == 0
    assert not watch.problems(), watch.problems()


def _series(page, chart: str, name: str) -> dict | None:
    """A line of a Status chart as the page shows it: its points and last and highest values."""
    return page.evaluate("([chart, name]) => { const l = [...document.querySelectorAll(`#${chart} polyline`)]"
                         ".find(e => e.dataset.series === name); return l ? {points: +l.dataset.points, "
                         "last: +l.dataset.last, max: +l.dataset.max} : null; }", [chart, name])


def test_status_charts_the_last_minutes_live_and_shows_speeds_queue_and_streams(browser, ui_url: str, shots: Path):
    """The Status tab's charts refresh themselves: a stream running now shows as its backend's tokens/s
    and one request in flight at the newest point; the measured speeds, the queue and the streams'
    counts are there too."""
    page, watch, _ = _open(browser, ui_url, DESKTOP)
    open_tab(page, "Status")
    page.wait_for_selector("#status-chart-tokens svg")
    wait_until(lambda: _series(page, "status-chart-load", "in flight"), 15, 0.25, "the load chart's first points")
    before = _series(page, "status-chart-load", "in flight")["points"]
    body = {"model": UPSTREAM_MODEL, "messages": [{"role": "user", "content": "long"}], "stream": True,
            "options": {"num_predict": 4096}}  # the scripted upstream streams a chunk a token, 50 ms apart
    with httpx.stream("POST", ui_url + "/ollama/api/chat", json=body, timeout=60) as streaming:
        lines = streaming.iter_lines()
        assert "tok0" in next(lines)
        running = wait_until(lambda: (s := _series(page, "status-chart-tokens", "upstream-1")) and s["last"] > 5
                             and _series(page, "status-chart-load", "in flight")["last"] >= 1 and s, 20, 0.25,
                             "the running stream at the chart's newest point")
        assert running["last"] < 40, running  # ~20 tokens/s: what streamed in the interval
        shoot(page, shots, "status-chart-desktop")
    assert _series(page, "status-chart-load", "in flight")["points"] > before
    wait_until(lambda: _series(page, "status-chart-tokens", "upstream-1")["last"] == 0, 20, 0.25,
               "the chart back to idle once the stream ended")
    # A finished answer is measured: its backend's speed for the model shows.
    short = {**body, "stream": False, "options": {"num_predict": 5}}
    assert httpx.post(ui_url + "/ollama/api/chat", json=short, timeout=60).json()["done"]
    wait_until(lambda: "upstream-1" in (t := page.inner_text("#status-speeds")) and UPSTREAM_MODEL in t, 15, 0.25,
               "the upstream's measured speed")
    assert "nobody waits" in page.inner_text("#status-queue")
    assert "lost past resuming" in page.inner_text("#status-streams")
    assert not watch.problems(), watch.problems()


@pytest.mark.parametrize("viewport_name", ["desktop", "phone"])
def test_every_tab_renders_without_errors_or_outside_requests(browser, ui_url: str, shots: Path,
                                                              viewport_name: str):
    viewport = DESKTOP if viewport_name == "desktop" else PHONE
    page, watch, load_s = _open(browser, ui_url, viewport)
    print(f"\n{viewport_name} page load: {load_s:.2f}s")
    for label, slug, ready in (("Chat", "chat", "#chat-input"), ("Status", "status", "#status-cards"),
                               ("Pair a device", "pair", "#pair-code"), ("Keys", "keys", "#keys-name"),
                               ("API", "api", "#api-curl")):
        if label != "Chat":
            open_tab(page, label)
        page.wait_for_selector(ready)
        page.wait_for_timeout(300)
        assert no_horizontal_overflow(page), f"{label} scrolls sideways at {viewport}"
        shoot(page, shots, f"{slug}-{viewport_name}")
    assert watch.requests > 0
    assert not watch.problems(), json.dumps(watch.problems(), indent=1)
