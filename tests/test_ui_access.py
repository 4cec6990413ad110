"""The web UI obeys the API's rules: with an API key configured, a visitor without one cannot chat
from the page nor through Gradio's own endpoints; with one, every chat from the page is an API
request under that key (its limits, the metrics, the log line, the shutdown drain).

Real processes on loopback: a scripted Ollama (tests/fake_ollama.py) behind the gateway
(`python app.py`, UI on), driven by Debian's Chromium and by `gradio_client`.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import gateway_env
from tests.procs import free_port, running
from tests.ui_helpers import (CHROMIUM, DESKTOP, Watch, bot_messages, browser, fake_ollama,  # noqa: F401
                              final_reply, send, set_number, wait_until)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed "
                                "(apt-get install chromium)")

MODEL = "fake:latest"
ENV_KEY = "sk-ui-access-test"
VISITOR = "203.0.113.7"  # the address the browser claims through X-Forwarded-For (OLLABRIDGE_FORWARDED_HOPS=1)


def stats(upstream: str) -> dict:
    return httpx.get(upstream + "/_stats").json()


def access_lines(log: Path, route: str = "/ollama/api/chat") -> list[dict]:
    """The gateway's JSON log lines (logger ollabridge.access) for `route`, oldest first."""
    found = re.findall(r"ollabridge\.access: (\{.*\})", log.read_text(errors="replace"))
    return [line for line in map(json.loads, found) if line.get("route") == route]


@pytest.fixture(scope="module")
def upstream(out_dir: Path):
    with fake_ollama(out_dir, "ui-access-ollama", MODEL, chunks=8, delay=0.01) as url:
        yield url


@pytest.fixture(scope="module")
def keyed(upstream: str, out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A gateway whose API needs a key (OLLABRIDGE_API_KEYS), behind one trusted proxy hop."""
    port = free_port()
    log = out_dir / "ui-access-gateway.log"
    log.unlink(missing_ok=True)
    env = gateway_env(tmp_path_factory.mktemp("ui-access"), port, OLLAMA_BASE_URL=upstream, OLLABRIDGE_UI="1",
                      OLLABRIDGE_API_KEYS=ENV_KEY, OLLABRIDGE_FORWARDED_HOPS="1", OLLABRIDGE_DEFAULT_MODEL=MODEL)
    with running(["app.py"], f"http://127.0.0.1:{port}/health", env=env, log=log):
        yield f"http://127.0.0.1:{port}", log


def open_page(browser, url: str, forwarded_for: str | None = VISITOR):
    page = browser.new_page(viewport=DESKTOP)
    page.set_default_timeout(30_000)
    if forwarded_for:
        page.set_extra_http_headers({"X-Forwarded-For": forwarded_for})
    watch = Watch().attach(page)
    page.goto(url + "/")
    page.wait_for_function("() => { const i = document.querySelector('#chat-model input'); return i && i.value; }")
    set_number(page, "chat-max-tokens", 16)  # the scripted Ollama streams one chunk per token asked
    return page, watch


def test_page_asks_for_a_key_and_chats_under_it(browser, keyed, upstream: str):
    url, log = keyed
    page, watch = open_page(browser, url)
    assert "needs an API key" in page.inner_text("#chat-key-note")
    chats = stats(upstream)["chats"]

    send(page, "Hello without a key")
    reply = final_reply(page, 1)
    assert reply.startswith("⚠️") and "API key needed" in reply, reply
    page.fill("#chat-key input", "sk-not-a-key")
    send(page, "Hello with a wrong key")
    reply = final_reply(page, 2)
    assert "API key not accepted" in reply and "not valid" in reply, reply
    assert stats(upstream)["chats"] == chats, "a chat without a valid key reached the backend"

    page.fill("#chat-key input", ENV_KEY)
    send(page, "Hello with the key")
    reply = final_reply(page, 3)
    assert "tok0" in reply and "tok15" in reply and "⚡ ollama" in reply, reply
    assert stats(upstream)["chats"] == chats + 1

    # Each chat was an API request: the edge's log line (the key's id, the visitor's forwarded address)...
    lines = access_lines(log)[-3:]
    assert [line["status"] for line in lines] == [401, 401, 200], lines
    assert {line["client"] for line in lines} == {VISITOR}, lines
    assert lines[0]["key"] is None and lines[2]["key"].startswith("env-") and lines[2]["model"] == MODEL, lines
    assert lines[2]["backend"] == "ollama" and lines[2]["tokens_out"] > 0, lines
    # ... and its metrics.
    metrics = httpx.get(url + "/metrics").text
    assert re.search(r'ollabridge_requests_total\{[^}]*route="/ollama/api/chat"[^}]*status="401"[^}]*\} 2\.0',
                     metrics), metrics
    assert "ollabridge_auth_failures_total 2.0" in metrics
    assert not watch.problems(), watch.problems()


def _chat_endpoint(client) -> int:
    """The fn_index of the Chat tab's send event (inputs: the message box first, the key last)."""
    ids = {c["id"]: (c.get("props") or {}).get("elem_id") for c in client.config["components"]}
    for index, dep in enumerate(client.config["dependencies"]):
        inputs = [ids.get(i) for i in dep.get("inputs") or []]
        if inputs and inputs[0] == "chat-input" and inputs[-1] == "chat-key":
            return dep.get("id", index)
    raise AssertionError("no chat event in the UI's config")


def test_gradio_endpoints_do_not_chat_without_a_key(keyed, upstream: str):
    """What the page does, `gradio_client` can do too (Gradio's `/gradio_api/queue/join`): the gate
    must be the chat itself, not the page. `private` events are only hidden from the client, so the
    test lifts that client-side filter and calls the chat event as a script would."""
    from gradio_client import Client

    url, log = keyed
    client = Client(url + "/", verbose=False, download_files=False)
    shown = client.view_api(print_info=False, return_format="dict")
    assert not shown["named_endpoints"] and not shown["unnamed_endpoints"], shown
    index = _chat_endpoint(client)
    client.endpoints[index].is_valid = True  # what any script posting to /gradio_api/queue/join can do
    chats = stats(upstream)["chats"]

    def chat(key: str) -> str:
        result = client.predict("Hello from a script", [], MODEL, "", 0.0, 16, key, fn_index=index)
        content = result[0][-1]["content"]  # Gradio 6: a list of {"type": "text", "text": ...} parts
        return "".join(part.get("text", "") for part in content) if isinstance(content, list) else content

    refused = chat("")
    assert "API key needed" in refused, refused
    assert stats(upstream)["chats"] == chats
    answered = chat(ENV_KEY)
    assert "tok0" in answered and "tok/s" in answered, answered
    assert stats(upstream)["chats"] == chats + 1
    lines = access_lines(log)[-2:]
    assert [line["status"] for line in lines] == [401, 200], lines


@pytest.fixture
def open_gateway(out_dir: Path, tmp_path: Path):
    """An open gateway (no keys) allowing one chat in flight per address, for one test (it gets SIGTERM)."""
    port = free_port()
    log = out_dir / "ui-drain-gateway.log"
    log.unlink(missing_ok=True)
    with fake_ollama(out_dir, "ui-drain-ollama", MODEL, chunks=8, delay=0.02) as upstream_url:
        env = gateway_env(tmp_path, port, OLLAMA_BASE_URL=upstream_url, OLLABRIDGE_UI="1",
                          OLLABRIDGE_FORWARDED_HOPS="1", OLLABRIDGE_RATE_LIMIT_STREAMS="1",
                          OLLABRIDGE_SHUTDOWN_TIMEOUT="1", OLLABRIDGE_DEFAULT_MODEL=MODEL)
        with running(["app.py"], f"http://127.0.0.1:{port}/health", env=env, log=log) as proc:
            yield f"http://127.0.0.1:{port}", upstream_url, proc, log


def test_page_chats_are_bounded_per_address_and_drained_on_sigterm(browser, open_gateway):
    url, upstream, proc, log = open_gateway
    page, _ = open_page(browser, url)
    assert "No API key needed" in page.inner_text("#chat-key-note")
    # The visitor's forwarded address may have one chat in flight, as on the API.
    send(page, "one")
    assert "tok15" in final_reply(page, 1)
    send(page, "two")
    assert "tok15" in final_reply(page, 2)
    # A long reply, then SIGTERM: the drain gives it OLLABRIDGE_SHUTDOWN_TIMEOUT (1 s), then cuts it
    # with the edge's error, which the chat shows.
    set_number(page, "chat-max-tokens", 4096)
    send(page, "three, and long")
    wait_until(lambda: len(bot_messages(page)) >= 3 and "tok5" in bot_messages(page)[2], 30, 0.05, "a long reply")
    other, _ = open_page(browser, url, forwarded_for=VISITOR)
    send(other, "four")
    refused = final_reply(other, 1)
    assert "Too many requests" in refused and "1 at once for this address" in refused, refused
    proc.send_signal(signal.SIGTERM)
    cut = final_reply(page, 3, timeout=15)
    assert "The reply was cut" in cut and "shutting down" in cut, cut
    assert "tok4000" not in cut
    proc.wait(15)
    lines = access_lines(log)
    assert sorted(line["status"] for line in lines) == [200, 200, 200, 429], lines
    assert {line["client"] for line in lines} == {VISITOR}
    assert [line.get("aborted") for line in lines].count("shutdown") == 1, lines
    wait_until(lambda: stats(upstream)["cancelled"] >= 1, 10, 0.1, "the upstream stream to be cancelled")
