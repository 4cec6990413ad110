"""A browser app on another origin as the judge: a page served from its own loopback port, in real
headless Chromium, sends the 3D Avatar Chatbot's requests to the gateway with `fetch` (CORS
preflights included, since both carry headers a simple request may not):

- its "OpenAI-compatible" provider: base URL `<gateway>/ollama/v1` (what the UI's API tab tells
  users to enter), to which the app appends `/v1/chat/completions` itself, a `Bearer sk-...` key
  (the app refuses keys without the `sk-` prefix), streamed;
- its OllaBridge provider: model `default` with `X-Client-Type` / `X-Client-Capabilities` headers.
"""

from __future__ import annotations

import http.server
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.procs import free_port
from tests.relay_support import fake_ollama, gateway
from tests.ui_helpers import CHROMIUM, Watch, browser  # noqa: F401 - the module's Chromium fixture

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed "
                                "(apt-get install chromium; tests/run.sh does)")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Avatar</title></head><body><div id="said"></div><script>
const PERSONA = [{role: 'system', content: 'You are a friendly 3D avatar.'}, {role: 'user', content: 'Hello!'}];

// The "OpenAI-compatible" provider: the app appends /v1/chat/completions to the base URL it is given.
async function openaiCompatible(baseUrl, apiKey, model) {
  const url = `${baseUrl.replace(/\\/$/, '')}/v1/chat/completions`;
  const res = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json',
    Authorization: `Bearer ${apiKey}`}, body: JSON.stringify({model, messages: PERSONA, max_tokens: 500, stream: true})});
  if (!res.ok) return {status: res.status, error: await res.json()};
  const reader = res.body.getReader(), decoder = new TextDecoder();
  let buffer = '', text = '', done = false, chunks = 0;
  for (;;) {
    const {value, done: end} = await reader.read();
    if (end) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf('\\n\\n')) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split('\\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') { done = true; continue; }
        chunks += 1;
        text += JSON.parse(data).choices?.[0]?.delta?.content || '';
      }
    }
  }
  document.getElementById('said').textContent = text;
  return {status: res.status, text, done, chunks, type: res.headers.get('content-type'),
          requestId: res.headers.get('x-request-id')};
}

// The OllaBridge provider: the model the gateway picks, and the app's client headers.
async function ollabridge(baseUrl) {
  const res = await fetch(`${baseUrl.replace(/\\/$/, '')}/v1/chat/completions`, {method: 'POST', headers: {
    'Content-Type': 'application/json', 'X-Client-Type': '3d-avatar-chatbot',
    'X-Client-Capabilities': 'streaming,emotions,gestures,tts'},
    body: JSON.stringify({model: 'default', messages: PERSONA, max_tokens: 6})});
  const data = await res.json();
  return {status: res.status, text: data.choices?.[0]?.message?.content, model: data.model};
}
</script></body></html>
"""


@contextmanager
def page_server(folder: Path) -> Iterator[str]:
    """The app's own origin: a plain static server on another loopback port."""
    (folder / "index.html").write_text(PAGE)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def app_origin(tmp_path_factory: pytest.TempPathFactory):
    with page_server(tmp_path_factory.mktemp("avatar-page")) as origin:
        yield origin


def open_app(browser, origin: str):
    page = browser.new_page()
    watch = Watch().attach(page)
    page.goto(f"{origin}/index.html")
    return page, watch


def test_avatar_chatbot_both_providers_from_another_origin(browser, app_origin, out_dir, tmp_path):
    with fake_ollama(out_dir, "avatar-m:latest") as up, gateway(out_dir, tmp_path, up) as gw:  # no API keys
        page, watch = open_app(browser, app_origin)
        streamed = page.evaluate("([base, key]) => openaiCompatible(base, key, 'avatar-m')",
                                 [f"{gw}/ollama/v1", "sk-anything"])
        # The open API takes the app's made-up sk- key; the doubled /v1 is forgiven.
        assert streamed["status"] == 200, streamed
        assert streamed["text"] == "".join(f"tok{i} " for i in range(500)) and streamed["done"]
        assert streamed["type"].startswith("text/event-stream") and streamed["requestId"]
        assert page.inner_text("#said").startswith("tok0 tok1")
        sent = httpx.get(f"{up}/_last").json()["chat"]
        assert sent["messages"][0] == {"role": "system", "content": "You are a friendly 3D avatar."}

        picked = page.evaluate("(base) => ollabridge(base)", f"{gw}/ollama")
        assert picked == {"status": 200, "text": "tok0 tok1 tok2 tok3 tok4 tok5 ", "model": "avatar-m:latest"}
        assert watch.problems() == []  # no CORS error, nothing left loopback
        page.close()


def test_avatar_chatbot_with_api_keys_sees_a_401_not_a_cors_failure(browser, app_origin, out_dir, tmp_path):
    with fake_ollama(out_dir, "avatar-m:latest") as up, gateway(out_dir, tmp_path, up, OLLABRIDGE_API_KEYS="sk-real") as gw:
        page, _ = open_app(browser, app_origin)
        refused = page.evaluate("([base, key]) => openaiCompatible(base, key, 'avatar-m')",
                                [f"{gw}/ollama/v1", "sk-anything"])
        assert refused["status"] == 401 and "key" in refused["error"]["error"]["message"].lower()
        allowed = page.evaluate("([base, key]) => openaiCompatible(base, key, 'avatar-m')",
                                [f"{gw}/ollama/v1", "sk-real"])
        assert allowed["status"] == 200 and allowed["done"] and allowed["chunks"] >= 500
        page.close()
